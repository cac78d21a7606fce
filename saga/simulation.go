package saga

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/sagabox/sagabox/outbox"
)

// Simulation runs one saga of a definition in memory, with a fake clock: no
// database, no Kafka. It is the engine of package sagatest, which wraps it
// for tests; the state machine is the one the Orchestrator runs. Local steps
// get a nil transaction.
type Simulation[D any] struct {
	m       *machine[D]
	s       *state
	data    D
	clock   time.Time
	codec   *outbox.Codec
	sent    []SentCommand
	history []Attempt
	lates   []LateReply
}

// SentCommand is a command the saga sent.
type SentCommand struct {
	Topic        string
	Command      string
	Step         int
	StepName     string
	Attempt      int
	Compensation bool
	PayloadType  string
	Payload      []byte

	codec *outbox.Codec
}

// Decode decodes the command's payload.
func (c SentCommand) Decode(v any) error { return decodePayload(c.codec, c.PayloadType, c.Payload, v) }

// NewSimulation prepares a saga with the given data. codec may be nil when
// no step has a payload.
func NewSimulation[D any](def *Definition[D], codec *outbox.Codec, data D) *Simulation[D] {
	sim := &Simulation[D]{data: data, codec: codec, clock: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		s: &state{ID: uuid.New(), Type: def.name, DefVersion: def.version, Status: StatusRunning, Attempt: 1}}
	sim.m = &machine[D]{def: def, replyTopic: "replies", encode: func(typ string, v any) ([]byte, error) {
		if codec == nil {
			return nil, ErrInvalidConfig
		}
		return encodePayload(codec, typ, v)
	}}
	return sim
}

// Start runs the saga until it waits for its first reply (or finishes).
func (sim *Simulation[D]) Start(ctx context.Context) error {
	return sim.m.advance(ctx, (*simEnv[D])(sim), sim.s, &sim.data)
}

// Reply delivers a reply; SagaID is filled in. It returns false when the
// saga ignored it (late, duplicate or for another step).
func (sim *Simulation[D]) Reply(ctx context.Context, r Reply) (bool, error) {
	r.SagaID = sim.s.ID
	r.codec = sim.codec
	return sim.m.onReply(ctx, (*simEnv[D])(sim), sim.s, &sim.data, &r)
}

// Advance moves the clock by d and fires what became due (a timeout, a
// retry), repeatedly, as the orchestrator's poller would.
func (sim *Simulation[D]) Advance(ctx context.Context, d time.Duration) error {
	sim.clock = sim.clock.Add(d)
	for {
		did, err := sim.m.onDue(ctx, (*simEnv[D])(sim), sim.s, &sim.data)
		if err != nil || !did {
			return err
		}
	}
}

// Retry and Abort are the operator calls.
func (sim *Simulation[D]) Retry(ctx context.Context) error {
	return sim.m.retry(ctx, (*simEnv[D])(sim), sim.s, &sim.data)
}

// Abort compensates a running saga.
func (sim *Simulation[D]) Abort(ctx context.Context, reason string) error {
	return sim.m.abort(ctx, (*simEnv[D])(sim), sim.s, &sim.data, reason)
}

// Status, Step, Attempt, Data, LastError describe the saga now.
func (sim *Simulation[D]) Status() Status    { return sim.s.Status }
func (sim *Simulation[D]) Step() int         { return sim.s.Step }
func (sim *Simulation[D]) Attempt() int      { return sim.s.Attempt }
func (sim *Simulation[D]) Data() D           { return sim.data }
func (sim *Simulation[D]) LastError() string { return sim.s.LastError }

// Failure is what made the saga compensate, as its compensations see it
// through FailureFrom; false if it has not compensated.
func (sim *Simulation[D]) Failure() (Failure, bool) {
	if sim.s.Failure == nil {
		return Failure{}, false
	}
	return *sim.s.Failure, true
}

// Deadline is when the awaited reply times out (zero when not waiting).
func (sim *Simulation[D]) Deadline() time.Time { return sim.s.Deadline }

// Now is the simulated clock.
func (sim *Simulation[D]) Now() time.Time { return sim.clock }

// Sent returns the commands sent so far, in order.
func (sim *Simulation[D]) Sent() []SentCommand { return append([]SentCommand(nil), sim.sent...) }

// LateReplies returns the late replies recorded so far (see LateReply).
func (sim *Simulation[D]) LateReplies() []LateReply { return append([]LateReply(nil), sim.lates...) }

// History returns the attempts so far.
func (sim *Simulation[D]) History() []Attempt { return append([]Attempt(nil), sim.history...) }

type simEnv[D any] Simulation[D]

func (e *simEnv[D]) now() time.Time { return e.clock }

func (e *simEnv[D]) runLocal(ctx context.Context, fn LocalFunc[D], data *D) error {
	return fn(ctx, nil, data)
}

func (e *simEnv[D]) send(c outCommand) {
	e.sent = append(e.sent, SentCommand{Topic: c.Topic, Command: c.Envelope.Command, Step: c.Envelope.Step,
		StepName: c.Envelope.StepName, Attempt: c.Envelope.Attempt, Compensation: c.Envelope.Compensation,
		PayloadType: c.Envelope.PayloadType, Payload: c.Envelope.Payload, codec: e.codec})
}

func (e *simEnv[D]) attemptStarted(step int, comp bool, attempt int, name string, at time.Time) {
	e.history = append(e.history, Attempt{Step: step, Name: name, Compensation: comp, Attempt: attempt, StartedAt: at})
}

func (e *simEnv[D]) attemptEnded(step int, comp bool, attempt int, _ string, outcome Outcome, errText string, at time.Time, _ time.Duration) {
	for i := len(e.history) - 1; i >= 0; i-- {
		h := &e.history[i]
		if h.Step == step && h.Compensation == comp && h.Attempt == attempt {
			h.FinishedAt, h.Outcome, h.Error = &at, outcome, errText
			return
		}
	}
}

func (e *simEnv[D]) finished(*state) {}

func (e *simEnv[D]) knownOutcome(_ context.Context, _ *state, step int, comp bool) (bool, error) {
	for _, h := range e.history {
		if h.Step == step && h.Compensation == comp && (h.Outcome == OutcomeSucceeded || h.Outcome == OutcomeRejected) {
			return true, nil
		}
	}
	return false, nil
}

func (e *simEnv[D]) late(_ context.Context, _ *state, l LateReply, cmd *outCommand) error {
	e.lates = append(e.lates, l)
	if cmd != nil {
		e.send(*cmd)
	}
	return nil
}

func (e *simEnv[D]) askAgain() {}
