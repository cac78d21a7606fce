package saga_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// A stock participant: one typed handler per command, registered at
// construction. HandleCommand decodes the command's payload into its Go
// type (here a struct with avro tags; a generated type works the same and
// names its schema itself); the handler's change, its reply and the inbox
// entry commit together, so a duplicate is answered from the inbox without
// running the handler again.
func ExampleNewParticipant() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, drop, err := testkit.CreateDatabase(ctx, "example_participant")
	if err != nil {
		panic(err)
	}
	defer drop() //nolint:errcheck
	if err := outbox.Migrate(ctx, db.Pool); err != nil {
		panic(err)
	}
	if err := saga.Migrate(ctx, db.Pool); err != nil {
		panic(err)
	}
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE stock (item text PRIMARY KEY, qty int NOT NULL); INSERT INTO stock VALUES ('book', 10)`); err != nil {
		panic(err)
	}
	codec := outbox.MustCodec(append(saga.Schemas(), reserveStockSchema, stockReservedSchema)...)
	writer, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec})
	if err != nil {
		panic(err)
	}
	// In a service, rt is the client that owns the pool, the writer, the
	// codec and Kafka; Attach makes its Run run the participant.
	rt := &exampleRuntime{pool: db.Pool, writer: writer, codec: codec}

	p, err := saga.NewParticipant(rt, saga.ParticipantConfig{
		Name:         "catalog",
		CommandTopic: "catalog.commands",
		Handlers: []saga.Handler{
			saga.HandleCommand("reserve_stock", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command, r reserveStock) (any, error) {
				fmt.Printf("reserving %d %s\n", r.Qty, r.Item)
				tag, err := tx.Exec(ctx, `UPDATE stock SET qty = qty - $2 WHERE item = $1 AND qty >= $2`, r.Item, r.Qty)
				if err != nil {
					return nil, err // transient: the orchestrator retries
				}
				if tag.RowsAffected() == 0 {
					return nil, saga.Reject("out of stock") // final: the saga compensates
				}
				return saga.Payload{Type: "test.catalog.StockReserved", Value: stockReserved{ReservationID: "r1"}}, nil
			}),
			saga.HandleCommand("release_stock", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command, r reserveStock) (any, error) {
				fmt.Printf("releasing %d %s\n", r.Qty, r.Item)
				_, err := tx.Exec(ctx, `UPDATE stock SET qty = qty + $2 WHERE item = $1`, r.Item, r.Qty)
				return nil, err
			}),
		},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("attached:", rt.attached)

	// Run consumes the commands from Kafka; Process is what it does with
	// each one.
	_, payload, _ := codec.Encode("test.catalog.ReserveStock", reserveStock{Item: "book", Qty: 3})
	reserve := &saga.Command{SagaID: uuid.New(), Name: "reserve_stock", Attempt: 1, ReplyTopic: "orders.replies",
		PayloadType: "test.catalog.ReserveStock", Payload: payload}
	for range 2 { // the second delivery is a duplicate
		if err := p.Process(ctx, reserve); err != nil {
			panic(err)
		}
	}
	release := *reserve
	release.Name, release.Compensation = "release_stock", true
	if err := p.Process(ctx, &release); err != nil {
		panic(err)
	}
	var qty int
	_ = db.Pool.QueryRow(ctx, `SELECT qty FROM stock`).Scan(&qty)
	fmt.Println("stock:", qty)

	// Registering a command twice is a configuration error.
	twice := saga.HandleFunc("reserve_stock", func(context.Context, pgx.Tx, *saga.Command) (any, error) { return nil, nil })
	_, err = saga.NewParticipant(rt, saga.ParticipantConfig{Name: "catalog", Handlers: []saga.Handler{twice, twice}})
	fmt.Println(err)
	// Output:
	// attached: [saga.participant.catalog]
	// reserving 3 book
	// releasing 3 book
	// stock: 10
	// saga: invalid config: ParticipantConfig.Handlers: command "reserve_stock" has two handlers
}

// exampleRuntime stands in for the client.
type exampleRuntime struct {
	pool     *pgxpool.Pool
	writer   *outbox.Writer
	codec    *outbox.Codec
	attached []string
}

func (r *exampleRuntime) Pool() *pgxpool.Pool                      { return r.pool }
func (r *exampleRuntime) Writer() *outbox.Writer                   { return r.writer }
func (r *exampleRuntime) Codec() *outbox.Codec                     { return r.codec }
func (r *exampleRuntime) Brokers() []string                        { return nil }
func (r *exampleRuntime) Registry() srclient.ISchemaRegistryClient { return nil }
func (r *exampleRuntime) Logger() *slog.Logger                     { return slog.New(slog.DiscardHandler) }
func (r *exampleRuntime) Registerer() prometheus.Registerer        { return nil }
func (r *exampleRuntime) Attach(name string, _ func(context.Context) error) error {
	r.attached = append(r.attached, name)
	return nil
}
