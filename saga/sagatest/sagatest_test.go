package sagatest_test

import (
	"context"
	"errors"
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
		}, CompensateLocal: func(_ context.Context, _ pgx.Tx, d *trip) error {
			d.Local = append(d.Local, "unnoted")
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
	if h.Deliver(saga.Reply{Step: 1, Attempt: 1, Outcome: saga.Success}) {
		t.Fatal("a reply to the timed-out attempt 1 was used")
	}
	if h.Deliver(saga.Reply{Step: 1, Attempt: 2, Compensation: true, Outcome: saga.Success}) {
		t.Fatal("a compensation reply was used for the action")
	}
	if h.Deliver(saga.Reply{Step: 2, Attempt: 1, Outcome: saga.Success}) {
		t.Fatal("a reply for a later step was used")
	}
	if !h.Deliver(saga.Reply{Step: 1, Attempt: 2, Outcome: saga.Success}) {
		t.Fatal("the awaited reply was ignored")
	}
	if h.Deliver(saga.Reply{Step: 1, Attempt: 2, Outcome: saga.Success}) {
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

func TestMermaid(t *testing.T) {
	m := tripDefinition(t).Mermaid()
	for _, want := range []string{"flowchart TD", "book_trip v1", "s3{{", "c2[/\"undo hotel", "c2[/\"undo hotel<br/>cancel_hotel → travel\"/] -->|ok| c1", "c0[/\"undo note<br/>local\"/] -->|ok| compensated"} {
		if !strings.Contains(m, want) {
			t.Errorf("diagram lacks %q:\n%s", want, m)
		}
	}
}
