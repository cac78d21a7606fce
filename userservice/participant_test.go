package userservice_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
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
	var value []byte
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(),
		`SELECT value FROM sagabox.outbox WHERE topic = $1 ORDER BY id DESC LIMIT 1`, replyTopic).Scan(&value), "read reply")
	var r map[string]any
	testkit.Must(t, avro.Unmarshal(b.svc.Messaging().Codec.MustSchema(saga.ReplyType), value, &r), "decode reply")
	if raw, _ := r["payload"].([]byte); len(raw) > 0 {
		testkit.Must(t, avro.Unmarshal(b.svc.Messaging().Codec.MustSchema(r["payload_type"].(string)), raw, &payload), "decode payload")
	}
	return r["outcome"].(string), r["reason"].(string), payload
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
	if outcome != string(saga.Success) || payload["balance_cents"] != int64(7500) || b.balance(t, user) != 7500 {
		t.Fatalf("debit reply %s %v, balance %d", outcome, payload, b.balance(t, user))
	}
	testkit.Must(t, p.Process(ctx, debit), "redelivered debit")
	if b.balance(t, user) != 7500 {
		t.Fatalf("a redelivered debit took credit again: %d", b.balance(t, user))
	}

	poor := b.command(t, uuid.New(), 1, false, schemas.CommandDebitCredit, schemas.NameDebitCredit,
		&schemas.DebitCredit{OrderID: uuid.NewString(), UserID: user, AmountCents: 1_000_000})
	testkit.Must(t, p.Process(ctx, poor), "poor debit")
	if outcome, reason, _ := b.lastReply(t); outcome != string(saga.Rejected) || reason != "insufficient credit" {
		t.Fatalf("insufficient credit: %s %q", outcome, reason)
	}

	refund := b.command(t, sagaID, 1, true, schemas.CommandRefundCredit, schemas.NameRefundCredit,
		&schemas.RefundCredit{OrderID: order, UserID: user, AmountCents: 2500})
	testkit.Must(t, p.Process(ctx, refund), "refund")
	if outcome, _, _ := b.lastReply(t); outcome != string(saga.Success) || b.balance(t, user) != 10000 {
		t.Fatalf("refund: %s, balance %d", outcome, b.balance(t, user))
	}
	testkit.Must(t, p.Process(ctx, refund), "redelivered refund")
	if b.balance(t, user) != 10000 {
		t.Fatalf("a redelivered refund gave credit again: %d", b.balance(t, user))
	}
}
