package participanttest_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/saga/participanttest"
)

// A participant's handlers on the real database, without Kafka: deliver a
// command, read the reply, deliver it again. In a test, pass t to New and
// run participanttest.RunIdempotencySuite(t, setup) for the whole barrier.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, drop, err := testkit.CreateDatabase(ctx, "example_participanttest")
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
	codec := outbox.MustCodec(append(saga.Schemas(), reserveSchema, reservedSchema)...)
	reserveBook := saga.HandleCommand("reserve", func(ctx context.Context, tx pgx.Tx, _ *saga.Command, r reserve) (any, error) {
		var left int
		err := tx.QueryRow(ctx, `UPDATE stock SET qty = qty - $2 WHERE item = $1 AND qty >= $2 RETURNING qty`, r.Item, r.Qty).Scan(&left)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, saga.Reject("out of stock")
		}
		if err != nil {
			return nil, err
		}
		return saga.Payload{Type: "kit.Reserved", Value: reserved{Left: left}}, nil
	})

	h := participanttest.New(exampleT{ctx}, db.Pool, codec, saga.ParticipantConfig{Name: "shop", Handlers: []saga.Handler{reserveBook}})
	cmd := h.Command("reserve", saga.Payload{Type: "kit.Reserve", Value: reserve{Item: "book", Qty: 4}})
	for range 2 {
		r := h.Deliver(cmd)
		var v reserved
		_ = r.Decode(&v)
		fmt.Printf("%s, %d left\n", r.Outcome, v.Left)
	}
	r := h.Deliver(h.Command("reserve", saga.Payload{Type: "kit.Reserve", Value: reserve{Item: "book", Qty: 40}}))
	fmt.Println(r)
	// Output:
	// succeeded, 6 left
	// succeeded, 6 left
	// rejected (out of stock)
}

// exampleT stands in for the *testing.T a test passes.
type exampleT struct{ ctx context.Context }

func (exampleT) Helper()                           {}
func (e exampleT) Context() context.Context        { return e.ctx }
func (exampleT) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
