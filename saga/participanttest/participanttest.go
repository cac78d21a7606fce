// Package participanttest runs a saga participant's handlers against the
// real database, without Kafka: deliver a command, read the reply the
// participant wrote into the outbox (outcome, reason, decoded payload), look
// at what the handlers changed. RunIdempotencySuite checks, on the
// participant's own handlers and effects, what the saga barrier promises:
// a redelivered command has no second effect, a compensation before its
// action does nothing, an action after its compensation does nothing, and
// two deliveries racing apply the command once.
//
// The database must hold the outbox and saga tables (outbox.Migrate,
// saga.Migrate) and the handlers' own; give each test its own database, and
// run no relay on it (the harness reads the replies from the outbox).
package participanttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// ReplyTopic is the reply topic of the commands the harness builds.
const ReplyTopic = "participanttest.replies"

// T is what the harness needs of a test: *testing.T and *testing.B have
// it. On a database failure, or a reply it cannot read, the harness calls
// Fatalf.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Context() context.Context
}

// Harness delivers commands to one participant.
type Harness struct {
	t     T
	p     *saga.Participant
	pool  *pgxpool.Pool
	codec *outbox.Codec
}

// New builds the participant cfg describes (its Name, Handlers, ...) on
// pool's database. codec must know saga.Schemas() and the payload types, as
// the client's does. CommandTopic and the Kafka fields are not used.
func New(t T, pool *pgxpool.Pool, codec *outbox.Codec, cfg saga.ParticipantConfig) *Harness {
	t.Helper()
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec})
	if err == nil {
		err = w.StoreSchemas(t.Context(), pool)
	}
	if err != nil {
		t.Fatalf("participanttest: outbox writer: %v (did you run outbox.Migrate?)", err)
	}
	p, err := saga.NewParticipant(&runtime{pool: pool, writer: w, codec: codec}, cfg)
	if err != nil {
		t.Fatalf("participanttest: %v", err)
	}
	return &Harness{t: t, p: p, pool: pool, codec: codec}
}

// Participant is the participant under test.
func (h *Harness) Participant() *saga.Participant { return h.p }

// Pool is the participant's database.
func (h *Harness) Pool() *pgxpool.Pool { return h.pool }

// Command is the command name of a new saga (step 0, first attempt, an
// action) carrying payload: a generated type, which names its schema, or a
// saga.Payload naming it.
func (h *Harness) Command(name string, payload any) *saga.Command {
	h.t.Helper()
	cmd := &saga.Command{SagaID: uuid.New(), SagaType: "participanttest", Step: 0, StepName: name, Attempt: 1, Name: name,
		ReplyTopic: ReplyTopic, MessageID: uuid.NewString()}
	h.encode(cmd, payload)
	return cmd
}

// Compensation is the compensation name of action (same saga and step)
// carrying payload.
func (h *Harness) Compensation(action *saga.Command, name string, payload any) *saga.Command {
	h.t.Helper()
	cmd := *action
	cmd.Name, cmd.Compensation, cmd.Attempt, cmd.MessageID = name, true, 1, uuid.NewString()
	h.encode(&cmd, payload)
	return &cmd
}

func (h *Harness) encode(cmd *saga.Command, payload any) {
	h.t.Helper()
	cmd.PayloadType, cmd.Payload = "", []byte{}
	if payload == nil {
		return
	}
	typ := ""
	if p, ok := payload.(saga.Payload); ok {
		typ, payload = p.Type, p.Value
	}
	s, b, err := h.codec.Encode(typ, payload)
	if err != nil {
		h.t.Fatalf("participanttest: %s payload: %v", cmd.Name, err)
	}
	cmd.PayloadType, cmd.Payload = s.Name, b
}

// Deliver runs cmd (a copy: cmd itself may be delivered again) as Run
// does with a command it consumed, and returns the reply the participant
// wrote. A database failure fails the test.
func (h *Harness) Deliver(cmd *saga.Command) Reply {
	h.t.Helper()
	before := len(h.Replies(cmd.SagaID))
	c := *cmd
	if err := h.p.Process(h.t.Context(), &c); err != nil {
		h.t.Fatalf("participanttest: deliver %s: %v", cmd.Name, err)
	}
	replies := h.Replies(cmd.SagaID)
	if len(replies) != before+1 {
		h.t.Fatalf("participanttest: deliver %s: %d replies written, want 1", cmd.Name, len(replies)-before)
	}
	return replies[before]
}

// Reply is a reply the participant wrote.
type Reply struct {
	Compensation bool
	Attempt      int
	Outcome      saga.Outcome
	Reason       string
	// PayloadType is the Avro full name of Payload's schema ("" for none).
	PayloadType string
	// Payload is Avro binary: read it with Decode.
	Payload []byte

	codec *outbox.Codec
}

// Decode decodes the reply's payload into v, a pointer to its Go type.
func (r Reply) Decode(v any) error {
	if r.PayloadType == "" {
		return errors.New("participanttest: the reply has no payload")
	}
	s, ok := r.codec.Schema(r.PayloadType)
	if !ok {
		return fmt.Errorf("participanttest: the codec does not know %s", r.PayloadType)
	}
	return avro.Unmarshal(s.Avro, r.Payload, v)
}

func (r Reply) String() string {
	s := string(r.Outcome)
	if r.Reason != "" {
		s += " (" + r.Reason + ")"
	}
	if r.PayloadType != "" {
		s += fmt.Sprintf(" with a %s", r.PayloadType)
	}
	return s
}

// same reports whether two replies say the same.
func (r Reply) same(o Reply) bool {
	return r.Outcome == o.Outcome && r.Reason == o.Reason && r.PayloadType == o.PayloadType && string(r.Payload) == string(o.Payload)
}

// Replies are the replies written for a saga, oldest first.
func (h *Harness) Replies(sagaID uuid.UUID) []Reply {
	h.t.Helper()
	rows, err := h.pool.Query(h.t.Context(), `SELECT message_type, value, headers FROM sagabox.outbox
		WHERE saga_id = $1 AND headers ? $2 ORDER BY id`, sagaID.String(), saga.HeaderOutcome)
	if err != nil {
		h.t.Fatalf("participanttest: read replies: %v", err)
	}
	defer rows.Close()
	var out []Reply
	for rows.Next() {
		var typ string
		var v []byte
		var hd map[string]string
		if err := rows.Scan(&typ, &v, &hd); err != nil {
			h.t.Fatalf("participanttest: read replies: %v", err)
		}
		attempt, err := strconv.Atoi(hd[saga.HeaderAttempt])
		if err != nil {
			h.t.Fatalf("participanttest: reply %s header: %v", saga.HeaderAttempt, err)
		}
		if typ == saga.EmptyType {
			typ, v = "", []byte{}
		}
		out = append(out, Reply{Compensation: hd[saga.HeaderCompensation] == "true", Attempt: attempt,
			Outcome: outcome(hd[saga.HeaderOutcome]), Reason: hd[saga.HeaderReason], PayloadType: typ, Payload: v, codec: h.codec})
	}
	if err := rows.Err(); err != nil {
		h.t.Fatalf("participanttest: read replies: %v", err)
	}
	return out
}

// outcome is the reply's outcome header as a saga.Outcome.
func outcome(wire string) saga.Outcome {
	switch wire {
	case "SUCCESS":
		return saga.OutcomeSucceeded
	case "REJECTED":
		return saga.OutcomeRejected
	}
	return saga.OutcomeError
}

// runtime is the saga.Runtime of a participant that does not consume.
type runtime struct {
	pool   *pgxpool.Pool
	writer *outbox.Writer
	codec  *outbox.Codec
}

func (r *runtime) Pool() *pgxpool.Pool                              { return r.pool }
func (r *runtime) Writer() *outbox.Writer                           { return r.writer }
func (r *runtime) Codec() *outbox.Codec                             { return r.codec }
func (r *runtime) Brokers() []string                                { return nil }
func (r *runtime) Registry() srclient.ISchemaRegistryClient         { return nil }
func (r *runtime) Logger() *slog.Logger                             { return slog.New(slog.DiscardHandler) }
func (r *runtime) Registerer() prometheus.Registerer                { return nil }
func (r *runtime) Attach(string, func(context.Context) error) error { return nil }
