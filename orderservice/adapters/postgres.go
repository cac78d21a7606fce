// Package adapters connects orderservice to Postgres (orders, their
// events through the outbox, their sagas) and to the catalog's HTTP API.
package adapters

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/migrate"
	"github.com/sagabox/sagabox/internal/platform/dbpool"
	"github.com/sagabox/sagabox/orderservice/domain"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Component is the name orderservice's migrations are recorded under.
const Component = "orderservice"

// Migrate creates or upgrades orderservice's tables.
func Migrate(ctx context.Context, db migrate.Beginner) error {
	_, err := migrate.Apply(ctx, db, Component, migrations, "migrations")
	return err
}

// Orders is the Postgres repository of orders. Every change of an order
// writes its event (OrderCreated, OrderApproved, OrderCancelled) to the
// outbox in the same transaction, keyed by order ID: the event is published
// if and only if the change commits, and one order's events stay in order.
type Orders struct {
	pool   *pgxpool.Pool
	writer *outbox.Writer
}

// NewOrders returns a repository on pool that writes events with writer.
func NewOrders(pool *pgxpool.Pool, writer *outbox.Writer) *Orders {
	return &Orders{pool: pool, writer: writer}
}

// Ping checks the database, for /readyz.
func (r *Orders) Ping(ctx context.Context) error { return r.pool.Ping(ctx) }

const orderColumns = `id, user_id, items, total_cents, status, reason, created_at, updated_at, version`

func scanOrder(row pgx.Row) (*domain.Order, error) {
	var o domain.Order
	var items []byte
	var status string
	err := row.Scan(&o.ID, &o.UserID, &items, &o.TotalCents, &status, &o.Reason, &o.CreatedAt, &o.UpdatedAt, &o.Version)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, domain.ErrOrderNotFound
	}
	if err != nil {
		return nil, err
	}
	o.Status = domain.Status(status)
	if err := json.Unmarshal(items, &o.Items); err != nil {
		return nil, fmt.Errorf("order %s items: %w", o.ID, err)
	}
	return &o, nil
}

// Create stores a new order and its OrderCreated event and calls start (the
// saga's Start) in one transaction: the order, its event, the saga's state
// and the saga's first command commit together or not at all.
//
// With an idempotency key, a second order of the same user with the same key
// is not created: Create returns the stored order with replayed true, and
// writes nothing. Whether the stored order answers the same request is the
// caller's to check (fingerprint).
func (r *Orders) Create(ctx context.Context, o *domain.Order, key, fingerprint string,
	start func(ctx context.Context, tx pgx.Tx) error) (stored *domain.Order, storedFingerprint string, replayed bool, err error) {
	items, err := json.Marshal(o.Items)
	if err != nil {
		return nil, "", false, err
	}
	var nullKey *string
	if key != "" {
		nullKey = &key
	}
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO orders (`+orderColumns+`, idempotency_key, request_fingerprint)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10)
ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING`,
			o.ID, o.UserID, items, o.TotalCents, string(o.Status), o.Reason, o.CreatedAt, o.UpdatedAt, nullKey, fingerprint)
		if err != nil {
			return fmt.Errorf("insert order: %w", err)
		}
		if tag.RowsAffected() == 0 {
			// The key was used first by a transaction that has committed
			// since (the INSERT waited for it): answer with its order.
			replayed = true
			stored, storedFingerprint, err = byKey(ctx, tx, o.UserID, key)
			return err
		}
		if err := r.writer.Write(ctx, tx, orderCreated(o)); err != nil {
			return err
		}
		o.Version = 1 // OrderCreated
		stored = o
		return start(ctx, tx)
	})
	if err != nil {
		return nil, "", false, err
	}
	return stored, storedFingerprint, replayed, nil
}

// ByIdempotencyKey returns the user's order made with key and the
// fingerprint of its request, or domain.ErrOrderNotFound.
func (r *Orders) ByIdempotencyKey(ctx context.Context, userID uuid.UUID, key string) (*domain.Order, string, error) {
	type found struct {
		o  *domain.Order
		fp string
	}
	f, err := dbpool.ReadRetry(ctx, r.pool, func(ctx context.Context) (found, error) {
		o, fp, err := byKey(ctx, r.pool, userID, key)
		return found{o, fp}, err
	})
	return f.o, f.fp, err
}

func byKey(ctx context.Context, q saga.Querier, userID uuid.UUID, key string) (*domain.Order, string, error) {
	var fp string
	row := q.QueryRow(ctx, `SELECT `+orderColumns+`, request_fingerprint FROM orders WHERE user_id = $1 AND idempotency_key = $2`, userID, key)
	o, err := scanOrder(rowWithExtra{row, &fp})
	if err != nil {
		return nil, "", err
	}
	return o, fp, nil
}

// rowWithExtra scans one more column after an order's.
type rowWithExtra struct {
	pgx.Row
	extra any
}

func (r rowWithExtra) Scan(dest ...any) error { return r.Row.Scan(append(dest, r.extra)...) }

// Order returns an order, or domain.ErrOrderNotFound. Like every read of
// this repository it is retried once on a fresh connection when its pooled
// one was broken (dbpool.ReadRetry).
func (r *Orders) Order(ctx context.Context, id uuid.UUID) (*domain.Order, error) {
	return dbpool.ReadRetry(ctx, r.pool, func(ctx context.Context) (*domain.Order, error) {
		return scanOrder(r.pool.QueryRow(ctx, `SELECT `+orderColumns+` FROM orders WHERE id = $1`, id))
	})
}

// OrdersOf returns up to limit orders of userID, newest first, created
// before the order `before` (uuid.Nil: from the newest). The index on
// (user_id, id DESC) serves any page at the same cost.
func (r *Orders) OrdersOf(ctx context.Context, userID, before uuid.UUID, limit int) ([]domain.Order, error) {
	var cursor any
	if before != uuid.Nil {
		cursor = before
	}
	return dbpool.ReadRetry(ctx, r.pool, func(ctx context.Context) ([]domain.Order, error) {
		rows, err := r.pool.Query(ctx, `SELECT `+orderColumns+` FROM orders
WHERE user_id = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3`, userID, cursor, limit)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.Order, error) {
			o, err := scanOrder(row)
			if err != nil {
				return domain.Order{}, err
			}
			return *o, nil
		})
	})
}

// Update runs fn on the order with the row locked, inside tx, and saves it
// with the event its status change calls for: OrderApproved or
// OrderCancelled. tx is the saga's: the saga's step, the order's change and
// the order's event commit together. When fn returns an error nothing is
// saved.
func (r *Orders) Update(ctx context.Context, tx pgx.Tx, id uuid.UUID, fn func(*domain.Order) error) error {
	o, err := scanOrder(tx.QueryRow(ctx, `SELECT `+orderColumns+` FROM orders WHERE id = $1 FOR UPDATE`, id))
	if err != nil {
		return err
	}
	before := o.Status
	if err := fn(o); err != nil {
		return err
	}
	items, err := json.Marshal(o.Items)
	if err != nil {
		return err
	}
	// Every event the change writes (below) counts one version.
	if o.Status != before && (o.Status == domain.StatusApproved || o.Status == domain.StatusCancelled) {
		o.Version++
	}
	if _, err := tx.Exec(ctx, `UPDATE orders SET items = $2, total_cents = $3, status = $4, reason = $5, updated_at = $6, version = $7 WHERE id = $1`,
		o.ID, items, o.TotalCents, string(o.Status), o.Reason, o.UpdatedAt, o.Version); err != nil {
		return fmt.Errorf("update order %s: %w", o.ID, err)
	}
	if o.Status == before {
		return nil
	}
	var event outbox.Message
	switch o.Status {
	case domain.StatusApproved:
		event = orderEvent(o, &schemas.OrderApproved{OrderID: o.ID.String(), UserID: o.UserID.String(),
			TotalCents: o.TotalCents, OccurredAt: o.UpdatedAt})
	case domain.StatusCancelled:
		event = orderEvent(o, &schemas.OrderCancelled{OrderID: o.ID.String(), UserID: o.UserID.String(),
			Reason: o.Reason, OccurredAt: o.UpdatedAt})
	default:
		return nil
	}
	return r.writer.Write(ctx, tx, event)
}

// PendingOrders counts userID's PENDING orders inside tx, after taking a
// transaction-scoped advisory lock on the user: a second order of the same
// user waits here until the first commits, then counts it (READ COMMITTED:
// each statement sees what committed before it). The partial index
// orders_pending (migration 002) keeps the count to the pending rows.
func (r *Orders) PendingOrders(ctx context.Context, tx pgx.Tx, userID uuid.UUID) (int, error) {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('orderservice.pending:' || $1::text, 0))`, userID); err != nil {
		return 0, fmt.Errorf("lock pending orders of %s: %w", userID, err)
	}
	var n int
	err := tx.QueryRow(ctx, `SELECT count(*) FROM orders WHERE user_id = $1 AND status = 'PENDING'`, userID).Scan(&n)
	return n, err
}

// Saga returns the state and step history of the order's saga (it has the
// order's ID), or an error wrapping saga.ErrNotFound once it is cleaned up.
func (r *Orders) Saga(ctx context.Context, orderID uuid.UUID) (*saga.Info, error) {
	return dbpool.ReadRetry(ctx, r.pool, func(ctx context.Context) (*saga.Info, error) {
		return saga.NewAdmin(r.pool).Get(ctx, orderID)
	})
}

func orderCreated(o *domain.Order) outbox.Message {
	lines := make([]schemas.OrderLine, len(o.Items))
	for i, it := range o.Items {
		lines[i] = schemas.OrderLine{Sku: it.SKU, Quantity: it.Quantity, UnitPriceCents: it.UnitPriceCents}
	}
	return orderEvent(o, &schemas.OrderCreated{OrderID: o.ID.String(), UserID: o.UserID.String(), Items: lines,
		TotalCents: o.TotalCents, OccurredAt: o.CreatedAt})
}

// orderEvent is an event on order.events keyed by the order: consumers see
// one order's events in the order they happened. The correlation ID is the
// order's (and its saga's) ID, as on the saga's commands.
func orderEvent(o *domain.Order, value any) outbox.Message {
	return outbox.Message{Topic: schemas.TopicOrderEvents, Key: o.ID.String(), Value: value,
		CorrelationID: o.ID.String(), SagaID: o.ID.String()}
}
