package sagatest_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/saga/sagatest"
)

type trip struct {
	Flight, Hotel string
	Local         []string
	// Failure is what the compensation of note learned from FailureFrom.
	Failure string
}

var retry = saga.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Second, MaxBackoff: 3 * time.Second}

func tripDefinition(t testing.TB) *saga.Definition[trip] {
	inv := func(cmd string) *saga.Invocation[trip] {
		return &saga.Invocation[trip]{Topic: "travel", Command: cmd}
	}
	def, err := saga.NewDefinition("book_trip", 1,
		saga.Step[trip]{Name: "note", Local: func(_ context.Context, _ pgx.Tx, d *trip) error {
			d.Local = append(d.Local, "noted")
			return nil
		}, CompensateLocal: func(ctx context.Context, _ pgx.Tx, d *trip) error {
			d.Local = append(d.Local, "unnoted")
			if f, ok := saga.FailureFrom(ctx); ok {
				d.Failure = fmt.Sprintf("%s/%s/%s", f.StepName, f.Outcome, f.Reason)
			}
			return nil
		}},
		saga.Step[trip]{Name: "flight", Invoke: inv("book_flight"), Compensate: inv("cancel_flight"), Timeout: 10 * time.Second, Retry: retry,
			CompensationRetry: retry},
		saga.Step[trip]{Name: "hotel", Invoke: inv("book_hotel"), Compensate: inv("cancel_hotel"), Timeout: 10 * time.Second, Retry: retry,
			CompensationRetry: retry},
		saga.Step[trip]{Name: "charge", Kind: saga.Pivot, Invoke: inv("charge_card"), Timeout: 10 * time.Second, Retry: retry},
		saga.Step[trip]{Name: "email", Kind: saga.Retriable, Invoke: inv("send_email"), Timeout: 10 * time.Second, Retry: retry},
	)
	if err != nil {
		t.Fatal(err)
	}
	return def
}

func TestHappyPath(t *testing.T) {
	h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
	for _, c := range []string{"book_flight", "book_hotel", "charge_card", "send_email"} {
		h.ExpectCommands(c)
		h.Succeed()
	}
	h.ExpectStatus(saga.StatusSucceeded)
	if got := h.Data().Local; !slices.Equal(got, []string{"noted"}) {
		t.Fatalf("local effects %v", got)
	}
}

// Invariant: a rejection at step i compensates steps i-1..0 in reverse
// order, and nothing else.
func TestRejectionAtEachStep(t *testing.T) {
	for _, tc := range []struct {
		rejectAt string
		undo     []string
		status   saga.Status
	}{
		{"book_flight", nil, saga.StatusCompensated},
		{"book_hotel", []string{"cancel_flight"}, saga.StatusCompensated},
		{"charge_card", []string{"cancel_hotel", "cancel_flight"}, saga.StatusCompensated},
		{"send_email", nil, saga.StatusFailed}, // past the pivot: never compensated
	} {
		t.Run(tc.rejectAt, func(t *testing.T) {
			h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
			for _, c := range []string{"book_flight", "book_hotel", "charge_card", "send_email"} {
				h.ExpectCommands(c)
				if c == tc.rejectAt {
					h.Reject("no")
					break
				}
				h.Succeed()
			}
			for _, u := range tc.undo {
				h.ExpectCommands(u)
				h.Succeed()
			}
			h.ExpectCommands()
			h.ExpectStatus(tc.status)
			if tc.status == saga.StatusCompensated && !slices.Equal(h.Data().Local, []string{"noted", "unnoted"}) {
				t.Fatalf("local step not compensated last: %v", h.Data().Local)
			}
		})
	}
}

// Invariant: a step that times out is retried with capped exponential
// backoff, and when its attempts run out it is compensated too (its outcome
// is unknown), then the steps before it.
func TestTimeoutRetriesWithBackoffThenCompensates(t *testing.T) {
	h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
	h.ExpectCommands("book_flight")
	h.Succeed()
	h.ExpectCommands("book_hotel")
	h.Timeout()
	h.ExpectCommands() // backing off: nothing sent at once
	h.Wait(999 * time.Millisecond).ExpectCommands()
	h.Wait(time.Millisecond).ExpectCommands("book_hotel") // attempt 2 after 1s
	h.Timeout().Wait(2 * time.Second).ExpectCommands("book_hotel")
	h.Timeout()
	h.ExpectCommands("cancel_hotel")
	h.Succeed()
	h.ExpectCommands("cancel_flight")
	h.Succeed()
	h.ExpectStatus(saga.StatusCompensated)
	want := []string{"note#1:succeeded", "flight#1:succeeded", "hotel#1:timed_out", "hotel#2:timed_out", "hotel#3:timed_out",
		"undo hotel#1:succeeded", "undo flight#1:succeeded", "undo note#1:succeeded"}
	if got := h.Trace(); !slices.Equal(got, want) {
		t.Fatalf("trace\n got %v\nwant %v", got, want)
	}
}

// Invariant: the backoff doubles and is capped.
func TestBackoffIsCapped(t *testing.T) {
	def := saga.MustDefinition("ping", 1, saga.Step[trip]{Name: "ping", Kind: saga.Retriable,
		Invoke: &saga.Invocation[trip]{Topic: "t", Command: "ping"},
		Retry:  saga.RetryPolicy{MaxAttempts: 8, InitialBackoff: time.Second, MaxBackoff: 5 * time.Second}})
	h := sagatest.New(t, def, nil, trip{}).Start()
	h.ExpectCommands("ping")
	var waits []time.Duration
	for range 7 {
		h.Fail("busy")
		start := h.Sim.Now()
		for len(h.Sim.Sent()) == len(waits)+1 {
			h.Wait(100 * time.Millisecond)
		}
		waits = append(waits, h.Sim.Now().Sub(start))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second}
	if !slices.Equal(waits, want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	h.Fail("busy").ExpectStatus(saga.StatusFailed)
}

// Invariant: replies for an old attempt, another step, the wrong phase, or
// delivered twice are ignored and change nothing.
func TestLateAndDuplicateRepliesAreIgnored(t *testing.T) {
	h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
	h.ExpectCommands("book_flight")
	h.Timeout().Wait(time.Second)
	h.ExpectCommands("book_flight") // attempt 2
	if h.Deliver(saga.Reply{Step: 1, Attempt: 1, Outcome: saga.OutcomeSucceeded}) {
		t.Fatal("a reply to the timed-out attempt 1 was used")
	}
	if h.Deliver(saga.Reply{Step: 1, Attempt: 2, Compensation: true, Outcome: saga.OutcomeSucceeded}) {
		t.Fatal("a compensation reply was used for the action")
	}
	if h.Deliver(saga.Reply{Step: 2, Attempt: 1, Outcome: saga.OutcomeSucceeded}) {
		t.Fatal("a reply for a later step was used")
	}
	if !h.Deliver(saga.Reply{Step: 1, Attempt: 2, Outcome: saga.OutcomeSucceeded}) {
		t.Fatal("the awaited reply was ignored")
	}
	if h.Deliver(saga.Reply{Step: 1, Attempt: 2, Outcome: saga.OutcomeSucceeded}) {
		t.Fatal("a duplicate reply was used twice")
	}
	h.ExpectCommands("book_hotel")
	if h.Sim.Step() != 2 {
		t.Fatalf("step %d, want 2", h.Sim.Step())
	}
}

// Invariant: a compensation that keeps failing ends the saga failed, never
// compensated; an operator retry then finishes the compensation.
func TestCompensationThatKeepsFailingEndsFailed(t *testing.T) {
	h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
	h.ExpectCommands("book_flight")
	h.Succeed()
	h.ExpectCommands("book_hotel")
	h.Reject("full")
	h.ExpectCommands("cancel_flight")
	for i := range 3 {
		h.Fail("airline down")
		if i < 2 {
			h.Wait(5 * time.Second).ExpectCommands("cancel_flight")
		}
	}
	h.ExpectStatus(saga.StatusFailed)
	if !strings.Contains(h.Sim.LastError(), "airline down") {
		t.Fatalf("last error %q", h.Sim.LastError())
	}
	if err := h.Sim.Retry(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.ExpectCommands("cancel_flight")
	h.Succeed()
	h.ExpectStatus(saga.StatusCompensated)
}

// Invariant: a pivot whose outcome stays unknown is not compensated around:
// the saga ends failed for an operator.
func TestPivotTimeoutEndsFailed(t *testing.T) {
	h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
	for _, c := range []string{"book_flight", "book_hotel"} {
		h.ExpectCommands(c)
		h.Succeed()
	}
	h.ExpectCommands("charge_card")
	h.Timeout().Wait(time.Second).Timeout().Wait(2 * time.Second).Timeout()
	h.ExpectCommands("charge_card", "charge_card")
	h.ExpectStatus(saga.StatusFailed)
}

// Invariant: the compensations learn which step failed and how: a
// rejection, a timeout or an error after every attempt, an abort. The
// Simulation (and Harness.Failure) shows the same failure.
func TestCompensationsSeeTheFailure(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(h *sagatest.Harness[trip])
		want string
	}{
		{"rejected", func(h *sagatest.Harness[trip]) { h.Reject("no rooms") }, "hotel/rejected/no rooms"},
		{"timed out", func(h *sagatest.Harness[trip]) {
			h.Timeout().Wait(time.Second).Timeout().Wait(2 * time.Second).Timeout()
		}, "hotel/timed_out/timed out after 3 attempts"},
		{"errors", func(h *sagatest.Harness[trip]) {
			h.Fail("db down").Wait(time.Second).Fail("db down").Wait(2 * time.Second).Fail("still down")
		}, "hotel/error/still down"},
		{"aborted", func(h *sagatest.Harness[trip]) {
			if err := h.Sim.Abort(context.Background(), "customer cancelled"); err != nil {
				t.Fatal(err)
			}
		}, "hotel/aborted/customer cancelled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
			h.ExpectCommands("book_flight")
			h.Succeed()
			if _, ok := h.Sim.Failure(); ok {
				t.Fatal("a failure before anything failed")
			}
			tc.fail(h)
			for h.Sim.Status() == saga.StatusCompensating {
				h.Succeed()
			}
			h.ExpectStatus(saga.StatusCompensated)
			if got := h.Data().Failure; got != tc.want {
				t.Errorf("the compensation saw %q, want %q", got, tc.want)
			}
			if f := h.Failure(); f.Step != 2 || f.StepName+"/"+string(f.Outcome)+"/"+f.Reason != tc.want || f.Rejected() != (tc.name == "rejected") ||
				f.TimedOut() != (tc.name == "timed out") {
				t.Errorf("Failure() = %+v", f)
			}
		})
	}
}

// Invariant: a local step that fails was rolled back: only the steps before
// it are compensated, with the step's error as the failure's reason.
func TestFailedLocalStepIsNotCompensated(t *testing.T) {
	def := saga.MustDefinition("local", 1,
		saga.Step[trip]{Name: "flight", Invoke: &saga.Invocation[trip]{Topic: "travel", Command: "book_flight"},
			Compensate: &saga.Invocation[trip]{Topic: "travel", Command: "cancel_flight"}},
		saga.Step[trip]{Name: "check", Local: func(context.Context, pgx.Tx, *trip) error { return saga.Reject("too far") },
			CompensateLocal: func(_ context.Context, _ pgx.Tx, d *trip) error {
				d.Local = append(d.Local, "undo check")
				return nil
			}},
	)
	h := sagatest.New(t, def, nil, trip{}).Start()
	h.ExpectCommands("book_flight")
	h.Succeed()
	h.ExpectCommands("cancel_flight")
	h.Succeed().ExpectStatus(saga.StatusCompensated)
	if len(h.Data().Local) != 0 {
		t.Fatalf("the failed step was compensated: %v", h.Data().Local)
	}
	if f := h.Failure(); f.StepName != "check" || !f.Rejected() || f.Reason != "too far" || f.Attempts != 1 {
		t.Fatalf("failure %+v", f)
	}
	if m := def.Mermaid(); !strings.Contains(m, "s1 -.->|fails| c0") || strings.Contains(m, "-.->|fails| c1") {
		t.Fatalf("diagram:\n%s", m)
	}
}

func TestAbortCompensatesTheStepInFlight(t *testing.T) {
	h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
	h.ExpectCommands("book_flight")
	h.Succeed()
	h.ExpectCommands("book_hotel")
	if err := h.Sim.Abort(context.Background(), "customer cancelled"); err != nil {
		t.Fatal(err)
	}
	h.ExpectCommands("cancel_hotel")
	h.Succeed()
	h.ExpectCommands("cancel_flight")
	h.Succeed().ExpectStatus(saga.StatusCompensated)
	if err := h.Sim.Abort(context.Background(), "again"); !errors.Is(err, saga.ErrWrongState) {
		t.Fatalf("abort of a finished saga: %v", err)
	}
}

func TestDefinitionRules(t *testing.T) {
	inv := &saga.Invocation[trip]{Topic: "t", Command: "c"}
	for name, steps := range map[string][]saga.Step[trip]{
		"no steps":                  nil,
		"no name":                   {{Invoke: inv}},
		"local and invoke":          {{Name: "a", Invoke: inv, Local: func(context.Context, pgx.Tx, *trip) error { return nil }}},
		"pivot with compensation":   {{Name: "a", Kind: saga.Pivot, Invoke: inv, Compensate: inv}},
		"compensatable after pivot": {{Name: "a", Kind: saga.Pivot, Invoke: inv}, {Name: "b", Invoke: inv}},
		"two pivots":                {{Name: "a", Kind: saga.Pivot, Invoke: inv}, {Name: "b", Kind: saga.Pivot, Invoke: inv}},
		"retriable then pivot":      {{Name: "a", Kind: saga.Retriable, Invoke: inv}, {Name: "b", Kind: saga.Pivot, Invoke: inv}},
		"duplicate names":           {{Name: "a", Invoke: inv}, {Name: "a", Invoke: inv}},
		"type without payload":      {{Name: "a", Invoke: &saga.Invocation[trip]{Topic: "t", Command: "c", Type: "x.Y"}}},
	} {
		if _, err := saga.NewDefinition("bad", 1, steps...); !errors.Is(err, saga.ErrInvalidDefinition) {
			t.Errorf("%s: got %v, want ErrInvalidDefinition", name, err)
		}
	}
}

// The diagram draws the transitions the machine takes, and no other: a
// rejected or rolled back step compensates only the steps before it, an
// invoked step whose outcome is unknown is compensated too, and a pivot
// whose outcome is unknown ends failed (TestRejectionAtEachStep,
// TestTimeoutRetriesWithBackoffThenCompensates, TestPivotTimeoutEndsFailed
// and TestFailedLocalStepIsNotCompensated drive these paths).
func TestMermaid(t *testing.T) {
	m := tripDefinition(t).Mermaid()
	want := []string{
		"flowchart TD",
		"    start([book_trip v1]) --> s0",
		"    s0[\"note<br/>local<br/><i>compensatable</i>\"] -->|ok| s1",
		"    s0 -.->|fails| compensated([compensated])",
		"    s1[\"flight<br/>book_flight → travel<br/><i>compensatable</i>\"] -->|ok| s2",
		"    s1 -.->|rejected| c0",
		"    s1 -.->|times out or errors| c1",
		"    s2[\"hotel<br/>book_hotel → travel<br/><i>compensatable</i>\"] -->|ok| s3",
		"    s2 -.->|rejected| c1",
		"    s2 -.->|times out or errors| c2",
		"    s3{{\"charge<br/>charge_card → travel<br/><i>pivot</i>\"}} -->|ok| s4",
		"    s3 -.->|rejected| c2",
		"    s3 -.->|times out or errors| failed([failed])",
		"    s4[\"email<br/>send_email → travel<br/><i>retriable</i>\"] -->|ok| succeeded([succeeded])",
		"    s4 -.->|rejected or out of attempts| failed([failed])",
		"    c2[/\"undo hotel<br/>cancel_hotel → travel\"/] -->|ok| c1",
		"    c2 -.->|attempts exhausted| failed([failed])",
		"    c1[/\"undo flight<br/>cancel_flight → travel\"/] -->|ok| c0",
		"    c1 -.->|attempts exhausted| failed([failed])",
		"    c0[/\"undo note<br/>local\"/] -->|ok| compensated([compensated])",
		"    c0 -.->|attempts exhausted| failed([failed])",
	}
	if got := strings.Split(strings.TrimSuffix(m, "\n"), "\n"); !slices.Equal(got, want) {
		t.Errorf("diagram:\n%s\nwant:\n%s", m, strings.Join(want, "\n"))
	}
}
