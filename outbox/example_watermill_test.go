package outbox_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log"
	"net/url"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

// PaymentReceived is an event of the example. Its Go name is its Avro name,
// so the AvroMarshaler finds its schema in the codec.
type PaymentReceived struct {
	PaymentID   string `avro:"payment_id"`
	OrderID     string `avro:"order_id"`
	AmountCents int64  `avro:"amount_cents"`
}

const paymentReceivedSchema = `{
  "type": "record", "name": "PaymentReceived", "namespace": "shop.payments",
  "fields": [
    {"name": "payment_id", "type": "string"},
    {"name": "order_id", "type": "string"},
    {"name": "amount_cents", "type": "long"}
  ]
}`

// A service written with watermill keeps its cqrs EventBus; only the
// publisher changes: it writes the events into the outbox inside the
// service's *sql.Tx, and the sagabox relay publishes them once it commits.
func ExampleNewWatermillPublisher() {
	ctx := context.Background()
	dbURL, drop := exampleDatabase(ctx)
	defer drop()

	// Once at start-up: the outbox tables and a Writer that knows the schemas.
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := outbox.Migrate(ctx, pool); err != nil {
		log.Fatal(err)
	}
	codec := outbox.MustCodec(paymentReceivedSchema)
	writer, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec})
	if err != nil {
		log.Fatal(err)
	}
	marshaler := outbox.AvroMarshaler{
		Codec: codec,
		Key:   func(v any) string { return v.(PaymentReceived).OrderID }, // per-order ordering
	}

	db, err := sql.Open("pgx", dbURL)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE payments (id text PRIMARY KEY, order_id text, amount_cents bigint)`); err != nil {
		log.Fatal(err)
	}

	// A use case: the business change and its event, in one transaction.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if _, err := tx.ExecContext(ctx, `INSERT INTO payments VALUES ('p-1', 'o-42', 1999)`); err != nil {
		log.Fatal(err)
	}
	pub, err := outbox.NewWatermillPublisher(tx, writer)
	if err != nil {
		log.Fatal(err)
	}
	bus, err := cqrs.NewEventBus(pub, func(string) string { return "shop.payments" }, marshaler)
	if err != nil {
		log.Fatal(err)
	}
	if err := bus.Publish(ctx, PaymentReceived{PaymentID: "p-1", OrderID: "o-42", AmountCents: 1999}); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}

	var topic, key, typ string
	var size int
	if err := pool.QueryRow(ctx, `SELECT topic, key, message_type, length(value) FROM sagabox.outbox`).Scan(&topic, &key, &typ, &size); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("topic=%s key=%s type=%s avro_bytes=%d\n", topic, key, typ, size)
	// Output:
	// topic=shop.payments key=o-42 type=shop.payments.PaymentReceived avro_bytes=11
}

// exampleDatabase creates a fresh database for the example on the test
// server and returns its URL and a function that drops it.
func exampleDatabase(ctx context.Context) (string, func()) {
	admin, err := pgx.Connect(ctx, testkit.AdminURL())
	if err != nil {
		log.Fatal(err)
	}
	defer admin.Close(ctx)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "sbt_example_watermill_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		log.Fatal(err)
	}
	u, err := url.Parse(testkit.AdminURL())
	if err != nil {
		log.Fatal(err)
	}
	u.Path = "/" + name
	return u.String(), func() {
		admin, err := pgx.Connect(ctx, testkit.AdminURL())
		if err != nil {
			return
		}
		defer admin.Close(ctx)
		_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}
}
