package outbox_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

// The whole pattern: an order and its event committed in one transaction, a
// relay publishing the event, a consumer decoding it.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Infrastructure: a scratch database on the local Postgres, an
	// in-process Kafka and Schema Registry.
	db, drop, err := testkit.CreateDatabase(ctx, "example_outbox")
	if err != nil {
		panic(err)
	}
	defer drop() //nolint:errcheck
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		panic(err)
	}
	defer kafka.Close()
	registry := srfake.New()
	defer registry.Close()

	// Start-up: tables, schemas, relay, writer.
	if err := outbox.Migrate(ctx, db.Pool); err != nil {
		panic(err)
	}
	codec := outbox.MustCodec(`{"type": "record", "name": "OrderPlaced", "namespace": "shop",
		"fields": [{"name": "order_id", "type": "string"}, {"name": "total_cents", "type": "long"}]}`)
	relay, err := outbox.NewRelay(outbox.RelayConfig{
		Pool:     db.Pool,
		Brokers:  kafka.ListenAddrs(),
		Registry: srclient.NewSchemaRegistryClient(registry.URL()),
	})
	if err != nil {
		panic(err)
	}
	writer, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec, Notify: relay.Notify})
	if err != nil {
		panic(err)
	}
	if err := writer.StoreSchemas(ctx, db.Pool); err != nil { // where the relay finds them
		panic(err)
	}
	relayCtx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan error)
	go func() { relayDone <- relay.Run(relayCtx) }()
	defer func() { stopRelay(); <-relayDone }()

	// The business transaction: the order and its event, or neither.
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, total_cents bigint)`); err != nil {
		panic(err)
	}
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders VALUES ('o-1', 4200)`); err != nil {
			return err
		}
		return writer.Write(ctx, tx, outbox.Message{
			Topic: "orders",
			Key:   "o-1",
			Type:  "shop.OrderPlaced",
			Value: map[string]any{"order_id": "o-1", "total_cents": int64(4200)},
		})
	})
	if err != nil {
		panic(err)
	}

	// A consumer: any Kafka client, values decoded via the registry.
	consumer, err := kgo.NewClient(kgo.SeedBrokers(kafka.ListenAddrs()...), kgo.ConsumeTopics("orders"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		panic(err)
	}
	defer consumer.Close()
	decoder := outbox.NewDecoder(srclient.NewSchemaRegistryClient(registry.URL()), nil)
	for {
		fetches := consumer.PollFetches(ctx)
		if ctx.Err() != nil {
			panic("no record within 30s")
		}
		if fetches.NumRecords() == 0 {
			continue
		}
		rec := fetches.Records()[0]
		var event struct {
			OrderID    string `avro:"order_id"`
			TotalCents int64  `avro:"total_cents"`
		}
		name, err := decoder.Decode(rec.Value, &event)
		if err != nil {
			panic(err)
		}
		fmt.Printf("key=%s type=%s order=%s total=%d\n", rec.Key, name, event.OrderID, event.TotalCents)
		return
	}
	// Output: key=o-1 type=shop.OrderPlaced order=o-1 total=4200
}
