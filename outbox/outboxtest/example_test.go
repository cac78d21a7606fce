package outboxtest_test

import (
	"context"
	"fmt"
	"time"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/outbox/outboxtest"
)

// A test looks at what its transaction wrote to the outbox before the
// transaction rolls back: no Kafka, no relay, no Avro by hand. In a test,
// outboxtest.ExpectOne(t, tx, codec, filters...) does the same and fails
// the test, listing the outbox, unless exactly one message matches.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, drop, err := testkit.CreateDatabase(ctx, "example_outboxtest")
	if err != nil {
		panic(err)
	}
	defer drop() //nolint:errcheck
	if err := outbox.Migrate(ctx, db.Pool); err != nil {
		panic(err)
	}
	codec := outbox.MustCodec(`{"type": "record", "name": "OrderPlaced", "namespace": "shop",
		"fields": [{"name": "order_id", "type": "string"}, {"name": "total_cents", "type": "long"}]}`)
	writer, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec})
	if err != nil {
		panic(err)
	}

	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		panic(err)
	}
	err = writer.Write(ctx, tx, outbox.Message{
		Topic: "orders", Key: "o-1", Type: "shop.OrderPlaced", CorrelationID: "req-7",
		Value: map[string]any{"order_id": "o-1", "total_cents": int64(4200)},
	})
	if err != nil {
		panic(err)
	}

	// Inside the transaction: what it wrote.
	msgs, err := outboxtest.Read(ctx, tx, codec, outboxtest.Topic("orders"), outboxtest.Type("shop.OrderPlaced"))
	if err != nil {
		panic(err)
	}
	for _, m := range msgs {
		var ev struct {
			OrderID    string `avro:"order_id"`
			TotalCents int64  `avro:"total_cents"`
		}
		if err := m.Decode(&ev); err != nil {
			panic(err)
		}
		fmt.Println(m)
		fmt.Printf("order %s, %d cents\n", ev.OrderID, ev.TotalCents)
	}

	// Rolled back, the message is gone with the business change.
	if err := tx.Rollback(ctx); err != nil {
		panic(err)
	}
	msgs, err = outboxtest.Read(ctx, db.Pool, codec)
	if err != nil {
		panic(err)
	}
	fmt.Println("after rollback:", len(msgs))
	// Output:
	// orders key="o-1" type=shop.OrderPlaced correlation=req-7
	// order o-1, 4200 cents
	// after rollback: 0
}
