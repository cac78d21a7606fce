package adapters_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/orderservice/adapters"
	"github.com/sagabox/sagabox/orderservice/domain"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/outbox/outboxtest"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
)

// codec is the one the service's client builds, to read the outbox with.
var codec = outbox.MustCodec(append(saga.Schemas(), schemas.All()...)...)

func repo(t *testing.T) (*adapters.Orders, *testkit.Database) {
	t.Helper()
	db := testkit.NewDatabase(t)
	ctx := context.Background()
	testkit.Must(t, adapters.Migrate(ctx, db.Pool), "migrate")
	client, err := sagabox.NewClient(db.Pool, sagabox.Config{Schemas: schemas.All()})
	testkit.Must(t, err, "client")
	testkit.Must(t, client.Migrate(ctx), "migrate sagabox")
	return adapters.NewOrders(db.Pool, client.Writer()), db
}

func count(t *testing.T, db *testkit.Database, sql string) int {
	t.Helper()
	var n int
	testkit.Must(t, db.Pool.QueryRow(context.Background(), sql).Scan(&n), "%s", sql)
	return n
}

func newOrder(t *testing.T) *domain.Order {
	t.Helper()
	o, err := domain.NewOrder(uuid.New(), []domain.Item{{SKU: "TEA-1", Quantity: 1}}, time.Now().UTC().Truncate(time.Microsecond))
	testkit.Must(t, err, "order")
	return o
}

// No order without its saga, no saga without its order: when starting the
// saga fails, the order and its event are not written either.
func TestCreateCommitsTheOrderItsEventAndTheSagaStartTogether(t *testing.T) {
	t.Parallel()
	r, db := repo(t)
	ctx := context.Background()
	boom := errors.New("saga start failed")
	_, _, _, err := r.Create(ctx, newOrder(t), "", "fp", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `CREATE TABLE started (id int)`)
		testkit.Must(t, err, "start's write")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Create: %v", err)
	}
	if n := count(t, db, `SELECT count(*) FROM orders`) + len(outboxtest.Messages(t, db.Pool, codec)) +
		count(t, db, `SELECT count(*) FROM pg_tables WHERE tablename = 'started'`); n != 0 {
		t.Fatalf("a failed start left %d rows behind", n)
	}

	o := newOrder(t)
	stored, _, replayed, err := r.Create(ctx, o, "", "fp", func(ctx context.Context, tx pgx.Tx) error { return nil })
	if err != nil || replayed || stored.ID != o.ID {
		t.Fatalf("Create: %v %v %v", stored, replayed, err)
	}
	var created schemas.OrderCreated
	m := outboxtest.ExpectOne(t, db.Pool, codec, outboxtest.Topic(schemas.TopicOrderEvents), outboxtest.Type(schemas.NameOrderCreated))
	testkit.Must(t, m.Decode(&created), "decode OrderCreated")
	if m.Key != o.ID.String() || created.OrderID != o.ID.String() {
		t.Fatalf("OrderCreated %s: %+v", m, created)
	}
}

// An order's event is written by the change that causes it, once: a change
// that leaves the status alone writes none, a failed change writes nothing.
func TestUpdateWritesTheEventOfAStatusChangeOnly(t *testing.T) {
	t.Parallel()
	r, db := repo(t)
	ctx := context.Background()
	o := newOrder(t)
	_, _, _, err := r.Create(ctx, o, "", "fp", func(context.Context, pgx.Tx) error { return nil })
	testkit.Must(t, err, "create")
	update := func(fn func(*domain.Order) error) error {
		return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return r.Update(ctx, tx, o.ID, fn) })
	}
	events := func() int {
		return len(outboxtest.Messages(t, db.Pool, codec, outboxtest.Topic(schemas.TopicOrderEvents)))
	}

	testkit.Must(t, update(func(o *domain.Order) error {
		return o.Price([]domain.Item{{SKU: "TEA-1", Quantity: 1, UnitPriceCents: 450}}, 450, time.Now())
	}), "price")
	if events() != 1 {
		t.Fatalf("pricing wrote an event: %d", events())
	}
	if err := update(func(o *domain.Order) error { o.Cancel("x", time.Now()); return errors.New("no") }); err == nil || events() != 1 {
		t.Fatalf("a failed change: %v, events %d", err, events())
	}
	testkit.Must(t, update(func(o *domain.Order) error { return o.Cancel(domain.ReasonInsufficientStock, time.Now()) }), "cancel")
	testkit.Must(t, update(func(o *domain.Order) error { return o.Cancel(domain.ReasonInsufficientStock, time.Now()) }), "cancel again")
	got, err := r.Order(ctx, o.ID)
	testkit.Must(t, err, "order")
	if got.Status != domain.StatusCancelled || got.Reason != domain.ReasonInsufficientStock || got.TotalCents != 450 || events() != 2 {
		t.Fatalf("order %+v, events %d", got, events())
	}
	outboxtest.ExpectOne(t, db.Pool, codec, outboxtest.Type(schemas.NameOrderCancelled), outboxtest.Key(o.ID.String()))
}
