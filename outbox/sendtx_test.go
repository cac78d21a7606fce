package outbox_test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

// SendTx commits the business row and its message together, or, when a
// statement fails, neither, and leaves the pool's connections usable.
func TestSendTxCommitsAllOrNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testkit.Ctx(t)
	_, err := b.pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY)`)
	testkit.Must(t, err, "create table")
	// One connection: SendTx must give it back outside any transaction, not
	// leave the pool to close it.
	cfg, err := pgxpool.ParseConfig(b.db.URL)
	testkit.Must(t, err, "pool config")
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	testkit.Must(t, err, "pool")
	t.Cleanup(pool.Close)
	pid := func() (n int32) {
		testkit.Must(t, pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&n), "pid")
		return n
	}
	before := pid()
	place := func(ids ...string) error {
		batch := &pgx.Batch{}
		for _, id := range ids {
			batch.Queue(`INSERT INTO orders (id) VALUES ($1)`, id)
			if err := b.writer.Queue(ctx, batch, outbox.Message{Topic: "orders", Key: id, Type: orderPlacedType,
				Value: orderPlaced{OrderID: id}}); err != nil {
				return err
			}
		}
		return outbox.SendTx(ctx, pool, batch)
	}
	counts := func() (orders, msgs int) {
		testkit.Must(t, b.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM sagabox.outbox)`).Scan(&orders, &msgs), "count")
		return
	}
	testkit.Must(t, place("o1", "o2"), "place")
	if o, m := counts(); o != 2 || m != 2 {
		t.Fatalf("after commit: %d orders, %d messages; want 2 and 2", o, m)
	}
	// o3 is fine, o1 exists: the whole transaction goes, o3's message too.
	err = place("o3", "o1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("SendTx with a duplicate key: %v, want the unique violation", err)
	}
	if o, m := counts(); o != 2 || m != 2 {
		t.Fatalf("after the failed transaction: %d orders, %d messages; want 2 and 2 still", o, m)
	}
	if after := pid(); after != before {
		t.Fatalf("the connection was replaced (backend %d, then %d): SendTx left it in a transaction", before, after)
	}
	testkit.Must(t, place("o4"), "place after a failure")
	if o, m := counts(); o != 3 || m != 3 {
		t.Fatalf("after a commit following the failure: %d orders, %d messages; want 3 and 3", o, m)
	}
}
