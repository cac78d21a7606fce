package userservice_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"

	"github.com/sagabox/sagabox/internal/platform/messaging"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/outbox/outboxtest"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
	"github.com/sagabox/sagabox/userservice"
	"github.com/sagabox/sagabox/userservice/adapters"
	"github.com/sagabox/sagabox/userservice/app"
)

const replyTopic = "order.saga.replies"

// command builds a saga command as the orchestrator sends it.
func (b bundle) command(t *testing.T, sagaID uuid.UUID, step int, compensation bool, name, payloadType string, payload any) *saga.Command {
	t.Helper()
	_, raw, err := b.svc.Messaging().Codec.Encode(payloadType, payload)
	testkit.Must(t, err, "encode %s", payloadType)
	return &saga.Command{SagaID: sagaID, SagaType: "order", Step: step, StepName: name, Attempt: 1, Compensation: compensation,
		Name: name, ReplyTopic: replyTopic, PayloadType: payloadType, Payload: raw, MessageID: uuid.NewString()}
}

// lastReply reads the newest reply the participant wrote to the outbox.
func (b bundle) lastReply(t *testing.T) (outcome, reason string, payload map[string]any) {
	t.Helper()
	m := outboxtest.Last(t, b.db.Pool, b.svc.Messaging().Codec, outboxtest.Topic(replyTopic), outboxtest.Type(saga.ReplyType))
	var r struct {
		Outcome     string `avro:"outcome"`
		Reason      string `avro:"reason"`
		PayloadType string `avro:"payload_type"`
	}
	testkit.Must(t, m.Decode(&r), "decode reply")
	if r.PayloadType != "" {
		testkit.Must(t, m.DecodePayload(&payload), "decode payload")
	}
	return r.Outcome, r.Reason, payload
}

// The credit commands work through the saga participant helper: the
// business change, the inbox row and the reply commit together.
func TestCreditCommandsThroughTheSagaParticipant(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	user := b.signUp(t, "ann@example.com")
	order, sagaID := uuid.NewString(), uuid.New()
	p := b.svc.Participant()

	debit := b.command(t, sagaID, 1, false, schemas.CommandDebitCredit, schemas.NameDebitCredit,
		&schemas.DebitCredit{OrderID: order, UserID: user, AmountCents: 2500})
	testkit.Must(t, p.Process(ctx, debit), "debit")
	outcome, _, payload := b.lastReply(t)
	if outcome != "SUCCESS" || payload["balance_cents"] != int64(7500) || b.balance(t, user) != 7500 {
		t.Fatalf("debit reply %s %v, balance %d", outcome, payload, b.balance(t, user))
	}
	testkit.Must(t, p.Process(ctx, debit), "redelivered debit")
	if b.balance(t, user) != 7500 {
		t.Fatalf("a redelivered debit took credit again: %d", b.balance(t, user))
	}

	poor := b.command(t, uuid.New(), 1, false, schemas.CommandDebitCredit, schemas.NameDebitCredit,
		&schemas.DebitCredit{OrderID: uuid.NewString(), UserID: user, AmountCents: 1_000_000})
	testkit.Must(t, p.Process(ctx, poor), "poor debit")
	if outcome, reason, _ := b.lastReply(t); outcome != "REJECTED" || reason != "insufficient credit" {
		t.Fatalf("insufficient credit: %s %q", outcome, reason)
	}

	refund := b.command(t, sagaID, 1, true, schemas.CommandRefundCredit, schemas.NameRefundCredit,
		&schemas.RefundCredit{OrderID: order, UserID: user, AmountCents: 2500})
	testkit.Must(t, p.Process(ctx, refund), "refund")
	if outcome, _, _ := b.lastReply(t); outcome != "SUCCESS" || b.balance(t, user) != 10000 {
		t.Fatalf("refund: %s, balance %d", outcome, b.balance(t, user))
	}
	testkit.Must(t, p.Process(ctx, refund), "redelivered refund")
	if b.balance(t, user) != 10000 {
		t.Fatalf("a redelivered refund gave credit again: %d", b.balance(t, user))
	}
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
		Messaging:      messaging.Config{Brokers: cluster.ListenAddrs(), RegistryURL: registry.URL()}})
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
	testkit.Must(t, svc.Messaging().Writer.Write(context.Background(), tx,
		outbox.Message{Topic: schemas.TopicUserCommands, Key: sagaID, Type: saga.CommandType, SagaID: sagaID, Value: map[string]any{
			"saga_id": sagaID, "saga_type": "order", "step": 1, "step_name": "debit_credit", "attempt": 1, "compensation": false,
			"command": schemas.CommandDebitCredit, "reply_topic": replyTopic, "payload_type": schemas.NameDebitCredit, "payload": payload}}), "write")
	testkit.Must(t, tx.Commit(context.Background()), "commit")

	replies := testkit.ReadAll(t, cluster.ListenAddrs(), replyTopic, 1, 60*time.Second)
	if len(replies) != 1 || len(replies[0].Value) < 5 {
		t.Fatalf("%d replies on %s", len(replies), replyTopic)
	}
	var r map[string]any
	testkit.Must(t, avro.Unmarshal(svc.Messaging().Codec.MustSchema(saga.ReplyType), replies[0].Value[5:], &r), "decode reply")
	if r["outcome"] != "SUCCESS" || replies[0].Key != sagaID {
		t.Fatalf("reply %v key %q", r, replies[0].Key)
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
