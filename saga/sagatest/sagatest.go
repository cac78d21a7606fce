// Package sagatest unit-tests a saga definition without Kafka or Postgres:
// given these replies (and this much time passing), expect these commands
// and this state. It drives the same state machine the Orchestrator runs.
//
//	h := sagatest.New(t, def, codec, OrderData{...})
//	h.Start()
//	h.ExpectCommands("reserve_stock")
//	h.Succeed()
//	h.ExpectCommands("debit_credit")
//	h.Reject("insufficient credit")
//	h.ExpectCommands("release_stock")
//	h.Succeed()
//	h.ExpectStatus(saga.StatusCompensated)
//
// TestPackageDocExample in this package runs those lines, so they compile.
//
// There is no database here, so local steps (Step.Local, CompensateLocal)
// run with a nil pgx.Tx: a local step that only decides, or changes the
// saga's data, can be tested here; one that uses its transaction needs a
// test against Postgres, as the saga package's own tests are.
package sagatest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// Harness drives one simulated saga.
type Harness[D any] struct {
	t     testing.TB
	Sim   *saga.Simulation[D]
	codec *outbox.Codec
	seen  int // commands already returned by ExpectCommands
}

// New prepares a saga with data. codec may be nil when no step has a
// payload.
func New[D any](t testing.TB, def *saga.Definition[D], codec *outbox.Codec, data D) *Harness[D] {
	return &Harness[D]{t: t, Sim: saga.NewSimulation(def, codec, data), codec: codec}
}

// Start starts the saga.
func (h *Harness[D]) Start() *Harness[D] {
	h.t.Helper()
	if err := h.Sim.Start(context.Background()); err != nil {
		h.t.Fatalf("sagatest: start: %v", err)
	}
	return h
}

// ExpectCommands checks the commands sent since the last call, by name, in
// order. Compensations are named as their Invocation.Command.
func (h *Harness[D]) ExpectCommands(names ...string) []saga.SentCommand {
	h.t.Helper()
	sent := h.Sim.Sent()[h.seen:]
	h.seen += len(sent)
	got := make([]string, len(sent))
	for i, c := range sent {
		got[i] = c.Command
	}
	if !slices.Equal(got, names) {
		h.t.Fatalf("sagatest: commands sent: got [%s], want [%s]", strings.Join(got, " "), strings.Join(names, " "))
	}
	return sent
}

// last returns the command the saga waits on.
func (h *Harness[D]) last() saga.SentCommand {
	h.t.Helper()
	sent := h.Sim.Sent()
	if len(sent) == 0 {
		h.t.Fatalf("sagatest: no command was sent")
	}
	return sent[len(sent)-1]
}

func (h *Harness[D]) reply(outcome saga.Outcome, reason, typ string, payload any) bool {
	h.t.Helper()
	c := h.last()
	r := saga.Reply{Step: c.Step, Attempt: c.Attempt, Compensation: c.Compensation, Outcome: outcome, Reason: reason}
	if typ != "" {
		_, b, err := h.codec.Encode(typ, payload)
		if err != nil {
			h.t.Fatalf("sagatest: encode reply payload: %v", err)
		}
		r.PayloadType, r.Payload = typ, b
	}
	used, err := h.Sim.Reply(context.Background(), r)
	if err != nil {
		h.t.Fatalf("sagatest: reply: %v", err)
	}
	return used
}

// Succeed answers the last command with success and no payload.
func (h *Harness[D]) Succeed() *Harness[D] {
	h.t.Helper()
	if !h.reply(saga.OutcomeSucceeded, "", "", nil) {
		h.t.Fatalf("sagatest: the saga ignored the reply")
	}
	return h
}

// SucceedWith answers the last command with success and a payload of the
// Avro type typ.
func (h *Harness[D]) SucceedWith(typ string, payload any) *Harness[D] {
	h.t.Helper()
	if !h.reply(saga.OutcomeSucceeded, "", typ, payload) {
		h.t.Fatalf("sagatest: the saga ignored the reply")
	}
	return h
}

// Reject answers the last command with a final "no".
func (h *Harness[D]) Reject(reason string) *Harness[D] {
	h.t.Helper()
	if !h.reply(saga.OutcomeRejected, reason, "", nil) {
		h.t.Fatalf("sagatest: the saga ignored the reply")
	}
	return h
}

// Fail answers the last command with a transient error.
func (h *Harness[D]) Fail(reason string) *Harness[D] {
	h.t.Helper()
	if !h.reply(saga.OutcomeError, reason, "", nil) {
		h.t.Fatalf("sagatest: the saga ignored the reply")
	}
	return h
}

// Deliver delivers an arbitrary reply (SagaID is filled in) and returns
// whether the saga used it, for late and duplicate replies.
func (h *Harness[D]) Deliver(r saga.Reply) bool {
	h.t.Helper()
	used, err := h.Sim.Reply(context.Background(), r)
	if err != nil {
		h.t.Fatalf("sagatest: reply: %v", err)
	}
	return used
}

// Wait moves the clock by d, firing timeouts and retries.
func (h *Harness[D]) Wait(d time.Duration) *Harness[D] {
	h.t.Helper()
	if err := h.Sim.Advance(context.Background(), d); err != nil {
		h.t.Fatalf("sagatest: advance: %v", err)
	}
	return h
}

// Timeout moves the clock to the deadline of the awaited reply.
func (h *Harness[D]) Timeout() *Harness[D] {
	h.t.Helper()
	dl := h.Sim.Deadline()
	if dl.IsZero() {
		h.t.Fatalf("sagatest: the saga awaits no reply (status %s)", h.Sim.Status())
	}
	return h.Wait(dl.Sub(h.Sim.Now()))
}

// ExpectStatus checks the saga's status.
func (h *Harness[D]) ExpectStatus(want saga.Status) *Harness[D] {
	h.t.Helper()
	if got := h.Sim.Status(); got != want {
		h.t.Fatalf("sagatest: status: got %s, want %s (last error: %s)", got, want, h.Sim.LastError())
	}
	return h
}

// Failure returns what made the saga compensate, as its compensations see it
// through saga.FailureFrom; it fails the test if the saga has not
// compensated.
func (h *Harness[D]) Failure() saga.Failure {
	h.t.Helper()
	f, ok := h.Sim.Failure()
	if !ok {
		h.t.Fatalf("sagatest: the saga has not compensated (status %s)", h.Sim.Status())
	}
	return f
}

// Data returns the saga's data now.
func (h *Harness[D]) Data() D { return h.Sim.Data() }

// Trace renders the history as "step:outcome" (compensations as
// "undo step:outcome"), handy for comparing with an expected sequence.
func (h *Harness[D]) Trace() []string {
	var out []string
	for _, a := range h.Sim.History() {
		name := a.Name
		if a.Compensation {
			name = "undo " + name
		}
		out = append(out, fmt.Sprintf("%s#%d:%s", name, a.Attempt, a.Outcome))
	}
	return out
}
