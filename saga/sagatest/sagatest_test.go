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

// toPivot runs the trip to its pivot (charge_card attempt 1 in flight).
func toPivot(t *testing.T, def *saga.Definition[trip]) *sagatest.Harness[trip] {
	h := sagatest.New(t, def, nil, trip{}).Start()
	for _, c := range []string{"book_flight", "book_hotel"} {
		h.ExpectCommands(c)
		h.Succeed()
	}
	h.ExpectCommands("charge_card")
	return h
}

// Invariant: a pivot whose outcome stays unknown is neither compensated
// around nor given up: past its retry budget the command is re-sent with
// capped backoff, the saga running and awaiting the pivot, and a definitive
// reply that comes late (to an attempt no longer in flight) is applied,
// once.
func TestPivotWhoseOutcomeIsUnknownKeepsBeingAsked(t *testing.T) {
	h := toPivot(t, tripDefinition(t))
	h.Timeout().Wait(time.Second).Timeout().Wait(2 * time.Second).Timeout()
	h.ExpectCommands("charge_card", "charge_card")
	// Past the retry policy's 3 attempts: asked again, the backoff capped
	// at the policy's 3 s.
	for attempt := 4; attempt <= 12; attempt++ {
		h.Wait(3 * time.Second)
		cmd := h.ExpectCommands("charge_card")[0]
		if cmd.Attempt != attempt {
			t.Fatalf("re-sent attempt %d, want %d", cmd.Attempt, attempt)
		}
		h.ExpectStatus(saga.StatusRunning)
		h.Timeout()
	}
	if !strings.Contains(h.Sim.LastError(), "outcome unknown: asking again") {
		t.Fatalf("last error %q", h.Sim.LastError())
	}
	// Backing off before attempt 13; attempt 2's reply comes at last.
	if !h.Deliver(saga.Reply{Step: 3, Attempt: 2, Outcome: saga.OutcomeSucceeded}) {
		t.Fatal("the late definitive reply to the pivot was ignored")
	}
	h.ExpectCommands("send_email")
	for _, a := range []int{1, 12, 13} {
		if h.Deliver(saga.Reply{Step: 3, Attempt: a, Outcome: saga.OutcomeSucceeded}) {
			t.Fatalf("the pivot's reply was applied twice (attempt %d)", a)
		}
	}
	h.Succeed().ExpectStatus(saga.StatusSucceeded)
	late := h.Sim.LateReplies()
	if len(late) != 1 || late[0].Disposition != saga.LateApplied || late[0].Attempt != 2 || late[0].Name != "charge" {
		t.Fatalf("late replies %+v, want the one applied", late)
	}
	if got := h.Trace(); !slices.Equal(got[len(got)-2:], []string{"charge#13:succeeded", "email#1:succeeded"}) {
		t.Fatalf("history ends %v", got[len(got)-2:])
	}
}

// Invariant: the replies the late path may use match on step and phase:
// an error reply to an old attempt, a compensation's reply, or a reply for
// another step do not move the pivot.
func TestStaleRepliesToAnUnknownPivotAreNotMisapplied(t *testing.T) {
	h := toPivot(t, tripDefinition(t))
	h.Timeout()
	for _, r := range []saga.Reply{
		{Step: 3, Attempt: 1, Outcome: saga.OutcomeError, Reason: "old attempt's error"},
		{Step: 3, Attempt: 1, Compensation: true, Outcome: saga.OutcomeSucceeded},
		{Step: 2, Attempt: 1, Outcome: saga.OutcomeRejected},
		{Step: 4, Attempt: 1, Outcome: saga.OutcomeSucceeded},
	} {
		if h.Deliver(r) {
			t.Fatalf("stale reply %+v was applied", r)
		}
	}
	h.ExpectStatus(saga.StatusRunning)
	h.Wait(time.Second).ExpectCommands("charge_card")
	// A late rejection is definitive too: the steps before the pivot are
	// compensated.
	if !h.Deliver(saga.Reply{Step: 3, Attempt: 1, Outcome: saga.OutcomeRejected, Reason: "card declined"}) {
		t.Fatal("the late rejection was ignored")
	}
	h.ExpectCommands("cancel_hotel")
}

// Invariant: with an UnknownOutcomeBudget, a pivot that stays silent ends
// failed once the budget is spent; a definitive reply arriving after that
// is applied, and so is one arriving after an operator's retry, once.
func TestPivotUnknownOutcomeBudgetThenLateReplies(t *testing.T) {
	inv := func(cmd string) *saga.Invocation[trip] { return &saga.Invocation[trip]{Topic: "travel", Command: cmd} }
	def := saga.MustDefinition("pay", 1,
		saga.Step[trip]{Name: "hotel", Invoke: inv("book_hotel"), Compensate: inv("cancel_hotel"), Timeout: 10 * time.Second, Retry: retry},
		saga.Step[trip]{Name: "charge", Kind: saga.Pivot, Invoke: inv("charge_card"), Timeout: 10 * time.Second, Retry: retry,
			UnknownOutcomeBudget: 30 * time.Second},
		saga.Step[trip]{Name: "email", Kind: saga.Retriable, Invoke: inv("send_email"), Timeout: 10 * time.Second, Retry: retry},
	)
	for _, afterRetry := range []bool{false, true} {
		h := sagatest.New(t, def, nil, trip{}).Start()
		h.ExpectCommands("book_hotel")
		h.Succeed()
		h.ExpectCommands("charge_card")
		h.Timeout().Wait(time.Second).Timeout().Wait(2 * time.Second).Timeout()
		h.ExpectCommands("charge_card", "charge_card")
		// Re-asks of 3 s backoff + 10 s timeout: two fit in 30 s.
		for range 2 {
			h.Wait(3 * time.Second).ExpectCommands("charge_card")
			h.ExpectStatus(saga.StatusRunning).Timeout()
		}
		h.ExpectStatus(saga.StatusFailed)
		if !strings.Contains(h.Sim.LastError(), "UnknownOutcomeBudget") {
			t.Fatalf("last error %q", h.Sim.LastError())
		}
		h.Wait(time.Hour).ExpectCommands() // failed: nothing more is sent
		if afterRetry {
			if err := h.Sim.Retry(context.Background()); err != nil {
				t.Fatal(err)
			}
			if c := h.ExpectCommands("charge_card")[0]; c.Attempt != 1 {
				t.Fatalf("retry sent attempt %d", c.Attempt)
			}
		}
		// The reply to attempt 4, sent before the saga failed.
		if !h.Deliver(saga.Reply{Step: 1, Attempt: 4, Outcome: saga.OutcomeSucceeded}) {
			t.Fatalf("after retry %v: the late reply was ignored", afterRetry)
		}
		h.ExpectCommands("send_email")
		if h.Deliver(saga.Reply{Step: 1, Attempt: 1, Outcome: saga.OutcomeSucceeded}) {
			t.Fatalf("after retry %v: the pivot's reply was applied twice", afterRetry)
		}
		h.Succeed().ExpectStatus(saga.StatusSucceeded)
		if late := h.Sim.LateReplies(); len(late) != 1 || late[0].Disposition != saga.LateApplied {
			t.Fatalf("after retry %v: late replies %+v", afterRetry, late)
		}
	}
}

// Invariant: an invoked retriable step that times out keeps being asked;
// one that keeps answering errors ends the saga failed.
func TestRetriableStepThatTimesOutKeepsBeingAsked(t *testing.T) {
	h := toPivot(t, tripDefinition(t))
	h.Succeed()
	h.ExpectCommands("send_email")
	h.Timeout().Wait(time.Second).Timeout().Wait(2 * time.Second).Timeout()
	h.ExpectCommands("send_email", "send_email")
	for range 5 {
		h.Wait(3 * time.Second).ExpectCommands("send_email")
		h.ExpectStatus(saga.StatusRunning).Timeout()
	}
	h.Wait(3 * time.Second).ExpectCommands("send_email")
	h.Succeed().ExpectStatus(saga.StatusSucceeded)
}

// Invariant: an abort while a step backs off between attempts compensates
// that step too: the attempt that timed out may yet run.
func TestAbortWhileBackingOffCompensatesTheStep(t *testing.T) {
	h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
	h.ExpectCommands("book_flight")
	h.Succeed()
	h.ExpectCommands("book_hotel")
	h.Timeout() // attempt 2 due in 1 s
	if err := h.Sim.Abort(context.Background(), "customer cancelled"); err != nil {
		t.Fatal(err)
	}
	h.ExpectCommands("cancel_hotel")
	h.Succeed()
	h.ExpectCommands("cancel_flight")
	h.Succeed().ExpectStatus(saga.StatusCompensated)
	if f := h.Failure(); f.Outcome != saga.OutcomeAborted || f.StepName != "hotel" || f.Attempts != 1 {
		t.Fatalf("failure %+v", f)
	}
	h.Wait(time.Hour).ExpectCommands() // the backed-off attempt is never sent
}

// Invariant: a reply the saga can no longer use is recorded, never
// silently dropped; an action that succeeded after the saga compensated
// past it gets its compensation (again: the participant's inbox makes a
// second one a no-op); a duplicate of a reply the saga used is not news.
func TestLateRepliesAreRecordedAndLateActionsCompensated(t *testing.T) {
	h := sagatest.New(t, tripDefinition(t), nil, trip{}).Start()
	h.ExpectCommands("book_flight")
	h.Succeed()
	h.ExpectCommands("book_hotel")
	h.Timeout().Wait(time.Second).Timeout().Wait(2 * time.Second).Timeout()
	h.ExpectCommands("book_hotel", "book_hotel", "cancel_hotel")
	h.Succeed()
	h.ExpectCommands("cancel_flight")
	h.Succeed().ExpectStatus(saga.StatusCompensated)

	if h.Deliver(saga.Reply{Step: 1, Attempt: 1, Outcome: saga.OutcomeSucceeded}) {
		t.Fatal("a duplicate of the flight's used reply changed the saga")
	}
	if len(h.Sim.LateReplies()) != 0 {
		t.Fatalf("a duplicate was recorded as news: %+v", h.Sim.LateReplies())
	}
	// The hotel was booked after all (attempt 2 ran): cancel it.
	if h.Deliver(saga.Reply{Step: 2, Attempt: 2, Outcome: saga.OutcomeSucceeded}) {
		t.Fatal("a late reply changed a compensated saga")
	}
	if c := h.ExpectCommands("cancel_hotel")[0]; !c.Compensation || c.Step != 2 || c.Attempt != 0 {
		t.Fatalf("compensation %+v", c)
	}
	late := h.Sim.LateReplies()
	if len(late) != 1 || late[0].Disposition != saga.LateCompensated || late[0].Name != "hotel" {
		t.Fatalf("late replies %+v", late)
	}
	h.ExpectStatus(saga.StatusCompensated)

	// A pivot that succeeds after an abort cannot be compensated: recorded
	// for an operator.
	h = toPivot(t, tripDefinition(t))
	if err := h.Sim.Abort(context.Background(), "operator gave up on the card"); err != nil {
		t.Fatal(err)
	}
	h.ExpectCommands("cancel_hotel")
	h.Succeed()
	h.ExpectCommands("cancel_flight")
	h.Succeed().ExpectStatus(saga.StatusCompensated)
	h.Deliver(saga.Reply{Step: 3, Attempt: 1, Outcome: saga.OutcomeSucceeded})
	h.ExpectCommands()
	late = h.Sim.LateReplies()
	if len(late) != 1 || late[0].Disposition != saga.LateRecorded || !strings.Contains(late[0].Note, "no compensation") {
		t.Fatalf("late replies %+v", late)
	}
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
// or retriable step whose outcome is unknown is asked again
// (TestRejectionAtEachStep, TestTimeoutRetriesWithBackoffThenCompensates,
// TestPivotWhoseOutcomeIsUnknownKeepsBeingAsked,
// TestRetriableStepThatTimesOutKeepsBeingAsked and
// TestFailedLocalStepIsNotCompensated drive these paths).
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
		"    s3 -.->|times out: asks again| s3",
		"    s3 -.->|errors past its attempts| failed([failed])",
		"    s4[\"email<br/>send_email → travel<br/><i>retriable</i>\"] -->|ok| succeeded([succeeded])",
		"    s4 -.->|times out: asks again| s4",
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
