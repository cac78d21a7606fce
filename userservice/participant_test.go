package userservice_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"

	"github.com/sagabox/sagabox/internal/platform/config"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/saga/participanttest"
	"github.com/sagabox/sagabox/schemas"
	"github.com/sagabox/sagabox/userservice"
	"github.com/sagabox/sagabox/userservice/adapters"
	"github.com/sagabox/sagabox/userservice/app"
	"github.com/sagabox/sagabox/userservice/ports"
)

const replyTopic = "order.saga.replies"

// harness runs the service's saga handlers on its database.
func (b bundle) harness(t *testing.T) *participanttest.Harness {
	return participanttest.New(t, b.db.Pool, b.svc.Client().Codec(),
		saga.ParticipantConfig{Name: userservice.Name, Handlers: ports.SagaHandlers(b.svc.App(), nil)})
}

// The credit commands work through the saga participant: the business
// change, the inbox row and the reply commit together.
func TestCreditCommandsThroughTheSagaParticipant(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := b.signUp(t, "ann@example.com")
	order := uuid.NewString()
	h := b.harness(t)

	debit := h.Command(schemas.CommandDebitCredit, &schemas.DebitCredit{OrderID: order, UserID: user, AmountCents: 2500})
	r := h.Deliver(debit)
	var debited schemas.CreditDebited
	testkit.Must(t, r.Decode(&debited), "decode %v", r)
	if r.Outcome != saga.OutcomeSucceeded || debited.BalanceCents != 7500 || b.balance(t, user) != 7500 {
		t.Fatalf("debit reply %v %+v, balance %d", r, debited, b.balance(t, user))
	}
	h.Deliver(debit)
	if b.balance(t, user) != 7500 {
		t.Fatalf("a redelivered debit took credit again: %d", b.balance(t, user))
	}

	poor := h.Command(schemas.CommandDebitCredit, &schemas.DebitCredit{OrderID: uuid.NewString(), UserID: user, AmountCents: 1_000_000})
	if r := h.Deliver(poor); r.Outcome != saga.OutcomeRejected || r.Reason != "insufficient credit" {
		t.Fatalf("insufficient credit: %v", r)
	}

	refund := h.Compensation(debit, schemas.CommandRefundCredit, &schemas.RefundCredit{OrderID: order, UserID: user, AmountCents: 2500})
	if r := h.Deliver(refund); r.Outcome != saga.OutcomeSucceeded || b.balance(t, user) != 10000 {
		t.Fatalf("refund: %v, balance %d", r, b.balance(t, user))
	}
	h.Deliver(refund)
	if b.balance(t, user) != 10000 {
		t.Fatalf("a redelivered refund gave credit again: %d", b.balance(t, user))
	}
}

// creditState is what the credit commands change: the balance and the
// order's charge.
type creditState struct {
	Balance int64
	Charge  string
}

// The saga barrier (participanttest's suite) on the real credit handlers.
func TestCreditHandlersIdempotencySuite(t *testing.T) {
	t.Parallel()
	participanttest.RunIdempotencySuite(t, func(t *testing.T) participanttest.Subject[creditState] {
		b := setup(t)
		user := b.signUp(t, "ann@example.com")
		h := b.harness(t)
		order := uuid.NewString()
		debit := h.Command(schemas.CommandDebitCredit, &schemas.DebitCredit{OrderID: order, UserID: user, AmountCents: 2500})
		return participanttest.Subject[creditState]{Harness: h, Action: debit,
			Compensation: h.Compensation(debit, schemas.CommandRefundCredit,
				&schemas.RefundCredit{OrderID: order, UserID: user, AmountCents: 2500}),
			State: func(ctx context.Context) (creditState, error) {
				s := creditState{Balance: b.balance(t, user)}
				err := b.db.Pool.QueryRow(ctx, `SELECT coalesce((SELECT status FROM credit_charges WHERE order_id = $1), '')`,
					order).Scan(&s.Charge)
				return s, err
			}}
	})
}

// End to end on Kafka (kfake) and a Schema Registry (srfake): a debit_credit
// command published to user.commands is answered on the reply topic through
// the real consumer and relay; then a clean shutdown.
func TestOnKafka(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	cluster := testkit.Kafka(t, 3)
	registry := testkit.Registry(t)
	svc, err := userservice.New(testkit.Ctx(t), userservice.Config{Pool: db.Pool, Addr: "127.0.0.1:0",
		PasswordParams: adapters.Argon2idParams{Memory: 64, Time: 1, Threads: 1},
		Messaging:      config.Kafka{Brokers: cluster.ListenAddrs(), RegistryURL: registry.URL()}})
	testkit.Must(t, err, "new userservice")
	defer svc.Close()
	u, err := svc.App().SignUp(context.Background(), app.SignUp{Email: "kafka@example.com", Password: "password-123", Name: "K"})
	testkit.Must(t, err, "sign up")

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()

	order, sagaID := uuid.NewString(), uuid.NewString()
	payload, err := (&schemas.DebitCredit{OrderID: order, UserID: u.ID.String(), AmountCents: 1234}).Marshal()
	testkit.Must(t, err, "payload")
	tx, err := db.Pool.Begin(context.Background())
	testkit.Must(t, err, "begin")
	testkit.Must(t, svc.Client().Writer().Write(context.Background(), tx,
		// A command in the envelope format older orchestrators wrote: still
		// handled (records in flight during an upgrade).
		outbox.Message{Topic: schemas.TopicUserCommands, Key: sagaID, Type: saga.CommandType, SagaID: sagaID, Value: map[string]any{
			"saga_id": sagaID, "saga_type": "order", "step": 1, "step_name": "debit_credit", "attempt": 1, "compensation": false,
			"command": schemas.CommandDebitCredit, "reply_topic": replyTopic, "payload_type": schemas.NameDebitCredit, "payload": payload}}), "write")
	testkit.Must(t, tx.Commit(context.Background()), "commit")

	replies := testkit.ReadAll(t, cluster.ListenAddrs(), replyTopic, 1, 60*time.Second)
	if len(replies) != 1 || len(replies[0].Value) < 5 {
		t.Fatalf("%d replies on %s", len(replies), replyTopic)
	}
	// The reply is its payload record, the saga metadata in headers.
	var r map[string]any
	h := replies[0].Headers
	testkit.Must(t, avro.Unmarshal(svc.Client().Codec().MustSchema(h[outbox.HeaderType]), replies[0].Value[5:], &r), "decode reply")
	if h[saga.HeaderOutcome] != "SUCCESS" || h[outbox.HeaderSagaID] != sagaID || replies[0].Key != sagaID || h[outbox.HeaderType] != schemas.NameCreditDebited {
		t.Fatalf("reply %v headers %v key %q", r, h, replies[0].Key)
	}
	var balance int64
	testkit.Must(t, db.Pool.QueryRow(context.Background(), `SELECT credit_cents FROM users WHERE id = $1`, u.ID).Scan(&balance), "balance")
	if balance != 10000-1234 {
		t.Fatalf("balance %d", balance)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return after shutdown")
	}
}
