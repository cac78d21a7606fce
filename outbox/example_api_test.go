package outbox_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

const exampleSchema = `{"type": "record", "name": "OrderPlaced", "namespace": "shop",
	"fields": [{"name": "order_id", "type": "string"}, {"name": "total_cents", "type": "long"}]}`

// exampleSetup gives an example a scratch database with the outbox tables
// and a writer that stored its schemas, and a function that drops it all.
func exampleSetup(ctx context.Context, label string) (*testkit.Database, *outbox.Writer, func()) {
	db, drop, err := testkit.CreateDatabase(ctx, label)
	if err != nil {
		panic(err)
	}
	if err := outbox.Migrate(ctx, db.Pool); err != nil {
		panic(err)
	}
	writer, err := outbox.NewWriter(outbox.WriterConfig{Codec: outbox.MustCodec(exampleSchema)})
	if err != nil {
		panic(err)
	}
	if err := writer.StoreSchemas(ctx, db.Pool); err != nil {
		panic(err)
	}
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, total_cents bigint)`); err != nil {
		panic(err)
	}
	return db, writer, func() { _ = drop() }
}

// printOutbox prints what is waiting in the outbox, oldest first.
func printOutbox(ctx context.Context, db *testkit.Database) {
	rows, err := db.Pool.Query(ctx, `SELECT topic, key, message_type FROM sagabox.outbox ORDER BY id`)
	if err != nil {
		panic(err)
	}
	n := 0
	for rows.Next() {
		var topic, key, typ string
		if err := rows.Scan(&topic, &key, &typ); err != nil {
			panic(err)
		}
		fmt.Printf("outbox: topic=%s key=%s type=%s\n", topic, key, typ)
		n++
	}
	if rows.Err() != nil {
		panic(rows.Err())
	}
	fmt.Printf("outbox: %d pending\n", n)
}

// Write adds messages inside the business transaction: they exist if and
// only if it commits.
func ExampleWriter_Write() {
	ctx := context.Background()
	db, writer, cleanup := exampleSetup(ctx, "example_writer_write")
	defer cleanup()

	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders VALUES ('o-1', 4200)`); err != nil {
			return err
		}
		return writer.Write(ctx, tx, outbox.Message{
			Topic: "orders", Key: "o-1", Type: "shop.OrderPlaced",
			Value: map[string]any{"order_id": "o-1", "total_cents": int64(4200)},
		})
	})
	if err != nil {
		panic(err)
	}
	// A transaction that rolls back takes its messages with it.
	_ = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if err := writer.Write(ctx, tx, outbox.Message{Topic: "orders", Key: "o-2", Type: "shop.OrderPlaced",
			Value: map[string]any{"order_id": "o-2", "total_cents": int64(1)}}); err != nil {
			return err
		}
		return fmt.Errorf("payment declined")
	})
	// A value that does not fit its schema is refused, naming the message.
	err = writer.Write(ctx, db.Pool, outbox.Message{Topic: "orders", Key: "o-3", Type: "shop.OrderPlaced",
		Value: map[string]any{"order_id": "o-3"}})
	fmt.Println("refused:", err != nil)
	printOutbox(ctx, db)
	// Output:
	// refused: true
	// outbox: topic=orders key=o-1 type=shop.OrderPlaced
	// outbox: 1 pending
}

// Queue puts the outbox insert into a pgx.Batch next to the business
// statements, so the messages cost no round trip of their own.
func ExampleWriter_Queue() {
	ctx := context.Background()
	db, writer, cleanup := exampleSetup(ctx, "example_writer_queue")
	defer cleanup()

	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO orders VALUES ('o-1', 4200)`)
		if err := writer.Queue(ctx, b, outbox.Message{Topic: "orders", Key: "o-1", Type: "shop.OrderPlaced",
			Value: map[string]any{"order_id": "o-1", "total_cents": int64(4200)}}); err != nil {
			return err
		}
		return tx.SendBatch(ctx, b).Close() // one round trip for both
	})
	if err != nil {
		panic(err)
	}
	printOutbox(ctx, db)
	// Output:
	// outbox: topic=orders key=o-1 type=shop.OrderPlaced
	// outbox: 1 pending
}

// SendTx sends BEGIN, the batch and COMMIT in one round trip; if a
// statement fails, nothing of the batch is written.
func ExampleSendTx() {
	ctx := context.Background()
	db, writer, cleanup := exampleSetup(ctx, "example_sendtx")
	defer cleanup()

	order := func(id string) *pgx.Batch {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO orders VALUES ($1, 4200)`, id)
		if err := writer.Queue(ctx, b, outbox.Message{Topic: "orders", Key: id, Type: "shop.OrderPlaced",
			Value: map[string]any{"order_id": id, "total_cents": int64(4200)}}); err != nil {
			panic(err)
		}
		return b
	}
	fmt.Println("first:", outbox.SendTx(ctx, db.Pool, order("o-1")))
	// The same order again: the INSERT fails, its message is not written.
	fmt.Println("duplicate refused:", outbox.SendTx(ctx, db.Pool, order("o-1")) != nil)
	printOutbox(ctx, db)
	// Output:
	// first: <nil>
	// duplicate refused: true
	// outbox: topic=orders key=o-1 type=shop.OrderPlaced
	// outbox: 1 pending
}

// A relay publishes what the writers committed; its metrics go to the
// Registerer (relays sharing one share the series).
func ExampleRelay() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, writer, cleanup := exampleSetup(ctx, "example_relay")
	defer cleanup()
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		panic(err)
	}
	defer kafka.Close()
	registry := srfake.New()
	defer registry.Close()

	metrics := prometheus.NewRegistry()
	relay, err := outbox.NewRelay(outbox.RelayConfig{
		Pool:       db.Pool,
		Brokers:    kafka.ListenAddrs(),
		Registry:   srclient.NewSchemaRegistryClient(registry.URL()),
		Registerer: metrics,
	})
	if err != nil {
		panic(err)
	}
	relayCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- relay.Run(relayCtx) }()

	for _, id := range []string{"o-1", "o-2"} {
		if err := writer.Write(ctx, db.Pool, outbox.Message{Topic: "orders", Key: id, Type: "shop.OrderPlaced",
			Value: map[string]any{"order_id": id, "total_cents": int64(100)}}); err != nil {
			panic(err)
		}
		relay.Notify() // or WriterConfig.Notify: relay.Notify
	}
	admin := outbox.NewAdmin(db.Pool)
	for {
		s, err := admin.Stats(ctx)
		if err != nil {
			panic(err)
		}
		if s.Pending == 0 {
			break
		}
		select {
		case <-ctx.Done():
			panic("not published within 30s")
		case <-time.After(10 * time.Millisecond):
		}
	}
	fmt.Println("second Run refused:", relay.Run(ctx) != nil)
	stop()
	fmt.Println("Run returned:", <-done)
	fmt.Println("published:", counterSum(metrics, "sagabox_outbox_published_total"))
	// Output:
	// second Run refused: true
	// Run returned: <nil>
	// published: 2
}

// counterSum sums the series of the counter name in reg.
func counterSum(reg prometheus.Gatherer, name string) float64 {
	families, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// Admin shows what is pending and parked and puts parked messages back in
// line.
func ExampleAdmin() {
	ctx := context.Background()
	db, writer, cleanup := exampleSetup(ctx, "example_admin")
	defer cleanup()
	for _, id := range []string{"o-1", "o-2"} {
		if err := writer.Write(ctx, db.Pool, outbox.Message{Topic: "orders", Key: id, Type: "shop.OrderPlaced",
			Value: map[string]any{"order_id": id, "total_cents": int64(100)}}); err != nil {
			panic(err)
		}
	}
	// What the relay does after MaxAttempts failures (no relay runs here).
	if _, err := db.Pool.Exec(ctx, `UPDATE sagabox.outbox SET parked_at = now(), attempts = 10,
		last_error = 'record too large' WHERE key = 'o-2'`); err != nil {
		panic(err)
	}

	admin := outbox.NewAdmin(db.Pool)
	s, err := admin.Stats(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Printf("pending=%d parked=%d\n", s.Pending, s.Parked)
	parked, err := admin.ListParked(ctx, 10)
	if err != nil {
		panic(err)
	}
	for _, p := range parked {
		fmt.Printf("parked: key=%s attempts=%d error=%q\n", p.Key, p.Attempts, p.LastError)
	}
	n, err := admin.Retry(ctx, parked[0].ID)
	if err != nil {
		panic(err)
	}
	fmt.Println("retried:", n)
	if s, err = admin.Stats(ctx); err != nil {
		panic(err)
	}
	fmt.Printf("pending=%d parked=%d\n", s.Pending, s.Parked)
	// Output:
	// pending=1 parked=1
	// parked: key=o-2 attempts=10 error="record too large"
	// retried: 1
	// pending=2 parked=0
}
