package catalogservice_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"

	"github.com/sagabox/sagabox/catalogservice"
	"github.com/sagabox/sagabox/catalogservice/ports"
	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/config"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/saga/participanttest"
	"github.com/sagabox/sagabox/schemas"
)

const replyTopic = "order.saga.replies"

// decodeReply reads a reply record: the outcome and reason from its
// headers, the payload (its value, unframed) with the schema message_type
// names.
func decodeReply(t *testing.T, codec *outbox.Codec, headers map[string]string, value []byte) (outcome, reason string, payload map[string]any) {
	t.Helper()
	if typ := headers[outbox.HeaderType]; typ != saga.EmptyType {
		testkit.Must(t, avro.Unmarshal(codec.MustSchema(typ), value, &payload), "decode payload")
	}
	return headers[saga.HeaderOutcome], headers[saga.HeaderReason], payload
}

// harness runs the service's saga handlers on its database.
func (b bundle) harness(t *testing.T) *participanttest.Harness {
	return participanttest.New(t, b.db.Pool, b.svc.Client().Codec(),
		saga.ParticipantConfig{Name: catalogservice.Name, Handlers: ports.SagaHandlers(b.svc.App())})
}

func TestStockCommandsThroughTheSagaParticipant(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addProduct(t, "A", "Apple", 50, 10)
	b.addProduct(t, "B", "Banana", 20, 1)
	h := b.harness(t)
	order := uuid.NewString()

	reserve := h.Command(schemas.CommandReserveStock,
		&schemas.ReserveStock{OrderID: order, Items: []schemas.StockLine{{Sku: "A", Quantity: 3}, {Sku: "B", Quantity: 1}}})
	r := h.Deliver(reserve)
	var reserved schemas.StockReserved
	testkit.Must(t, r.Decode(&reserved), "decode %v", r)
	if r.Outcome != saga.OutcomeSucceeded || reserved.TotalCents != 170 || b.stock(t, "A") != 7 || b.stock(t, "B") != 0 {
		t.Fatalf("reserve: %v %+v, stock A %d B %d", r, reserved, b.stock(t, "A"), b.stock(t, "B"))
	}
	h.Deliver(reserve)
	if b.stock(t, "A") != 7 {
		t.Fatalf("a redelivered reserve took stock again: %d", b.stock(t, "A"))
	}

	short := h.Command(schemas.CommandReserveStock,
		&schemas.ReserveStock{OrderID: uuid.NewString(), Items: []schemas.StockLine{{Sku: "A", Quantity: 1}, {Sku: "B", Quantity: 1}}})
	if r := h.Deliver(short); r.Outcome != saga.OutcomeRejected || r.Reason != "insufficient stock for B" || b.stock(t, "A") != 7 {
		t.Fatalf("short: %v, stock A %d", r, b.stock(t, "A"))
	}

	release := h.Compensation(reserve, schemas.CommandReleaseStock, &schemas.ReleaseStock{OrderID: order})
	h.Deliver(release)
	if r := h.Deliver(release); r.Outcome != saga.OutcomeSucceeded || b.stock(t, "A") != 10 || b.stock(t, "B") != 1 {
		t.Fatalf("release: %v, stock A %d B %d", r, b.stock(t, "A"), b.stock(t, "B"))
	}
}

// stockState is what the stock commands change: the stock of the
// products, and the order's reservation.
type stockState struct {
	A, B        int
	Reservation string
}

// The saga barrier (participanttest's suite) on the real stock handlers.
func TestStockHandlersIdempotencySuite(t *testing.T) {
	t.Parallel()
	participanttest.RunIdempotencySuite(t, func(t *testing.T) participanttest.Subject[stockState] {
		b := setup(t)
		b.addProduct(t, "A", "Apple", 50, 10)
		b.addProduct(t, "B", "Banana", 20, 5)
		h := b.harness(t)
		order := uuid.NewString()
		reserve := h.Command(schemas.CommandReserveStock,
			&schemas.ReserveStock{OrderID: order, Items: []schemas.StockLine{{Sku: "A", Quantity: 3}, {Sku: "B", Quantity: 2}}})
		return participanttest.Subject[stockState]{Harness: h, Action: reserve,
			Compensation: h.Compensation(reserve, schemas.CommandReleaseStock, &schemas.ReleaseStock{OrderID: order}),
			State: func(ctx context.Context) (stockState, error) {
				s := stockState{A: b.stock(t, "A"), B: b.stock(t, "B")}
				err := b.db.Pool.QueryRow(ctx, `SELECT coalesce((SELECT status FROM stock_reservations WHERE order_id = $1), '')`,
					order).Scan(&s.Reservation)
				return s, err
			}}
	})
}

// End to end on Kafka (kfake) and a Schema Registry (srfake): a command
// published to catalog.commands is answered on the reply topic, and order
// events published to order.events reach the read model, each through the
// real relay and consumers. Then a clean shutdown.
func TestOnKafka(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	cluster := testkit.Kafka(t, 3)
	registry := testkit.Registry(t)
	issuer, err := auth.NewIssuer(auth.IssuerConfig{Key: auth.GenerateKey(), Issuer: catalogservice.DefaultIssuer,
		Audience: catalogservice.DefaultAudience})
	testkit.Must(t, err, "issuer")
	verifier, err := auth.NewVerifier(auth.VerifierConfig{Keys: func(context.Context) ([]byte, error) { return issuer.JWKS(), nil },
		Issuer: catalogservice.DefaultIssuer, Audience: catalogservice.DefaultAudience})
	testkit.Must(t, err, "verifier")
	svc, err := catalogservice.New(testkit.Ctx(t), catalogservice.Config{Pool: db.Pool, Verifier: verifier, Addr: "127.0.0.1:0",
		Messaging: config.Kafka{Brokers: cluster.ListenAddrs(), RegistryURL: registry.URL()}})
	testkit.Must(t, err, "new catalogservice")
	defer svc.Close()
	_, err = svc.App().AddProduct(context.Background(), "A", "Apple", 50, 10)
	testkit.Must(t, err, "product")

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()

	// Another service's outbox, publishing to the catalog like orderservice
	// will: here simply the catalog's own writer, in its own transactions.
	order := uuid.NewString()
	userID := uuid.NewString()
	payload, err := (&schemas.ReserveStock{OrderID: order, Items: []schemas.StockLine{{Sku: "A", Quantity: 2}}}).Marshal()
	testkit.Must(t, err, "payload")
	sagaID := uuid.NewString()
	tx, err := db.Pool.Begin(context.Background())
	testkit.Must(t, err, "begin")
	testkit.Must(t, svc.Client().Writer().Write(context.Background(), tx,
		// A command in the envelope format older orchestrators wrote: still
		// handled (records in flight during an upgrade).
		outbox.Message{Topic: schemas.TopicCatalogCommands, Key: sagaID, Type: saga.CommandType, SagaID: sagaID, Value: map[string]any{
			"saga_id": sagaID, "saga_type": "order", "step": 0, "step_name": "reserve_stock", "attempt": 1, "compensation": false,
			"command": schemas.CommandReserveStock, "reply_topic": replyTopic, "payload_type": schemas.NameReserveStock, "payload": payload}},
		outbox.Message{Topic: schemas.TopicOrderEvents, Key: order, Value: &schemas.OrderCreated{OrderID: order, UserID: userID,
			Items: []schemas.OrderLine{{Sku: "A", Quantity: 2}}, OccurredAt: time.Now()}},
		outbox.Message{Topic: schemas.TopicOrderEvents, Key: order, Value: &schemas.OrderApproved{OrderID: order, UserID: userID,
			TotalCents: 100, OccurredAt: time.Now()}},
	), "write")
	testkit.Must(t, tx.Commit(context.Background()), "commit")

	replies := testkit.ReadAll(t, cluster.ListenAddrs(), replyTopic, 1, 60*time.Second)
	if len(replies) != 1 {
		t.Fatalf("%d replies on %s", len(replies), replyTopic)
	}
	value := replies[0].Value
	if len(value) < 5 || value[0] != 0 {
		t.Fatalf("reply is not in the Confluent wire format: % x", value[:min(8, len(value))])
	}
	outcome, _, reply := decodeReply(t, svc.Client().Codec(), replies[0].Headers, value[5:])
	if outcome != "SUCCESS" || reply["total_cents"] != int64(100) {
		t.Fatalf("reply %s %v", outcome, reply)
	}
	testkit.Eventually(t, 60*time.Second, "the order view to be approved", func() bool {
		v, err := svc.App().OrderView(context.Background(), userID, false, order)
		return err == nil && v.Status == "APPROVED" && len(v.Items) == 1 && v.Items[0].Name == "Apple"
	})

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
