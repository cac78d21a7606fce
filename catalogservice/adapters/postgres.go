// Package adapters connects catalogservice to Postgres.
package adapters

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/catalogservice/domain"
	"github.com/sagabox/sagabox/internal/migrate"
	"github.com/sagabox/sagabox/internal/platform/dbpool"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Component is the name catalogservice's migrations are recorded under.
const Component = "catalogservice"

// Migrate creates or upgrades catalogservice's tables.
func Migrate(ctx context.Context, db migrate.Beginner) error {
	_, err := migrate.Apply(ctx, db, Component, migrations, "migrations")
	return err
}

// Catalog is the Postgres repository of products, stock reservations and
// order views.
type Catalog struct {
	pool *pgxpool.Pool
}

// NewCatalog returns a repository on pool.
func NewCatalog(pool *pgxpool.Pool) *Catalog { return &Catalog{pool: pool} }

// Ping checks the database, for /readyz.
func (c *Catalog) Ping(ctx context.Context) error { return c.pool.Ping(ctx) }

const productColumns = `sku, name, price_cents, stock, created_at`

func scanProduct(row pgx.Row) (*domain.Product, error) {
	var p domain.Product
	err := row.Scan(&p.SKU, &p.Name, &p.PriceCents, &p.Stock, &p.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, domain.ErrProductNotFound
	}
	return &p, err
}

// AddProduct stores a new product; a taken SKU is domain.ErrSKUTaken.
func (c *Catalog) AddProduct(ctx context.Context, p *domain.Product) error {
	_, err := c.pool.Exec(ctx, `INSERT INTO products (`+productColumns+`) VALUES ($1, $2, $3, $4, $5)`,
		p.SKU, p.Name, p.PriceCents, p.Stock, p.CreatedAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return domain.ErrSKUTaken
	}
	return err
}

// Product returns the product with sku, or domain.ErrProductNotFound.
func (c *Catalog) Product(ctx context.Context, sku string) (*domain.Product, error) {
	return dbpool.ReadRetry(ctx, c.pool, func(ctx context.Context) (*domain.Product, error) {
		return scanProduct(c.pool.QueryRow(ctx, `SELECT `+productColumns+` FROM products WHERE sku = $1`, sku))
	})
}

// Products returns up to limit products with a SKU after `after`, by SKU
// (keyset pagination: the primary key index serves it at any depth).
func (c *Catalog) Products(ctx context.Context, after string, limit int) ([]domain.Product, error) {
	return dbpool.ReadRetry(ctx, c.pool, func(ctx context.Context) ([]domain.Product, error) {
		rows, err := c.pool.Query(ctx, `SELECT `+productColumns+` FROM products WHERE sku > $1 ORDER BY sku LIMIT $2`, after, limit)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(r pgx.CollectableRow) (domain.Product, error) {
			p, err := scanProduct(r)
			if err != nil {
				return domain.Product{}, err
			}
			return *p, nil
		})
	})
}

// LockReservation returns the reservation of orderID, locked until tx ends.
// A first command for the order claims the row: a duplicate running at the
// same moment waits on the claim and then sees the first one's decision.
func (c *Catalog) LockReservation(ctx context.Context, tx pgx.Tx, orderID string) (*domain.Reservation, error) {
	if _, err := tx.Exec(ctx, `INSERT INTO stock_reservations (order_id, status) VALUES ($1, 'NEW') ON CONFLICT (order_id) DO NOTHING`, orderID); err != nil {
		return nil, fmt.Errorf("claim reservation: %w", err)
	}
	r := &domain.Reservation{OrderID: orderID}
	var status string
	var lines []byte
	if err := tx.QueryRow(ctx, `SELECT status, lines, reason FROM stock_reservations WHERE order_id = $1 FOR UPDATE`, orderID).
		Scan(&status, &lines, &r.Reason); err != nil {
		return nil, fmt.Errorf("lock reservation: %w", err)
	}
	if status != "NEW" {
		r.Status = domain.ReservationStatus(status)
	}
	if err := json.Unmarshal(lines, &r.Lines); err != nil {
		return nil, fmt.Errorf("reservation %s lines: %w", orderID, err)
	}
	return r, nil
}

// SaveReservation writes r's status, lines and reason.
func (c *Catalog) SaveReservation(ctx context.Context, tx pgx.Tx, r *domain.Reservation) error {
	lines, err := json.Marshal(r.Lines)
	if err != nil {
		return err
	}
	if r.Lines == nil {
		lines = []byte("[]")
	}
	_, err = tx.Exec(ctx, `UPDATE stock_reservations SET status = $2, lines = $3, reason = $4, updated_at = now() WHERE order_id = $1`,
		r.OrderID, string(r.Status), lines, r.Reason)
	return err
}

// TakeStock takes every line (sorted by SKU, see domain.NormalizeLines) or
// none, inside tx, and returns the lines priced. When one line cannot be
// taken it undoes the others (a savepoint) and returns the Shortage.
//
// Each line is one conditional UPDATE: `stock >= $n` is checked and the
// stock decremented under the row lock in one statement, so 200 concurrent
// orders for 5 units take exactly 5 (PITFALLS.md 22). Reading the stock
// first and writing it after is the oversell bug.
func (c *Catalog) TakeStock(ctx context.Context, tx pgx.Tx, lines []domain.Line) ([]domain.Line, *domain.Shortage, error) {
	sp, err := tx.Begin(ctx) // SAVEPOINT
	if err != nil {
		return nil, nil, err
	}
	defer sp.Rollback(ctx) //nolint:errcheck // no-op after release
	priced := make([]domain.Line, 0, len(lines))
	for _, l := range lines {
		var price int64
		err := sp.QueryRow(ctx, `UPDATE products SET stock = stock - $2 WHERE sku = $1 AND stock >= $2 RETURNING price_cents`,
			l.SKU, l.Quantity).Scan(&price)
		if errors.Is(err, pgx.ErrNoRows) {
			var exists bool
			if err := sp.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM products WHERE sku = $1)`, l.SKU).Scan(&exists); err != nil {
				return nil, nil, err
			}
			if err := sp.Rollback(ctx); err != nil { // ROLLBACK TO SAVEPOINT: give back the lines taken so far
				return nil, nil, err
			}
			return nil, &domain.Shortage{SKU: l.SKU, Unknown: !exists}, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("take %s: %w", l.SKU, err)
		}
		priced = append(priced, domain.Line{SKU: l.SKU, Quantity: l.Quantity, UnitPriceCents: price})
	}
	if err := sp.Commit(ctx); err != nil { // RELEASE SAVEPOINT
		return nil, nil, err
	}
	return priced, nil, nil
}

// ReturnStock puts lines back. A product deleted since is skipped.
func (c *Catalog) ReturnStock(ctx context.Context, tx pgx.Tx, lines []domain.Line) error {
	for _, l := range lines {
		if _, err := tx.Exec(ctx, `UPDATE products SET stock = stock + $2 WHERE sku = $1`, l.SKU, l.Quantity); err != nil {
			return fmt.Errorf("return %s: %w", l.SKU, err)
		}
	}
	return nil
}

// ProductNames returns the names of the given SKUs that exist, inside tx.
func (c *Catalog) ProductNames(ctx context.Context, tx pgx.Tx, skus []string) (map[string]string, error) {
	rows, err := tx.Query(ctx, `SELECT sku, name FROM products WHERE sku = ANY($1)`, skus)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var sku, name string
		if err := rows.Scan(&sku, &name); err != nil {
			return nil, err
		}
		out[sku] = name
	}
	return out, rows.Err()
}

// UpdateOrderView runs fn on the view of orderID (empty when new) inside tx
// with the row locked, and saves it with one more version: every call is
// one order event applied (see migration 002).
func (c *Catalog) UpdateOrderView(ctx context.Context, tx pgx.Tx, orderID string, fn func(*domain.OrderView) (bool, error)) error {
	if _, err := tx.Exec(ctx, `INSERT INTO order_views (order_id, updated_at) VALUES ($1, 'epoch') ON CONFLICT (order_id) DO NOTHING`, orderID); err != nil {
		return fmt.Errorf("claim order view: %w", err)
	}
	v, err := scanView(tx.QueryRow(ctx, `SELECT `+viewColumns+` FROM order_views WHERE order_id = $1 FOR UPDATE`, orderID))
	if err != nil {
		return fmt.Errorf("lock order view: %w", err)
	}
	if _, err := fn(v); err != nil {
		return err
	}
	v.Version++
	items, err := json.Marshal(v.Items)
	if err != nil {
		return err
	}
	if v.Items == nil {
		items = []byte("[]")
	}
	_, err = tx.Exec(ctx, `UPDATE order_views SET user_id = $2, items = $3, total_cents = $4, status = $5, reason = $6, updated_at = $7, version = $8 WHERE order_id = $1`,
		v.OrderID, v.UserID, items, v.TotalCents, string(v.Status), v.Reason, v.UpdatedAt, v.Version)
	return err
}

const viewColumns = `order_id, user_id, items, total_cents, status, reason, updated_at, version`

func scanView(row pgx.Row) (*domain.OrderView, error) {
	var v domain.OrderView
	var items []byte
	var status string
	err := row.Scan(&v.OrderID, &v.UserID, &items, &v.TotalCents, &status, &v.Reason, &v.UpdatedAt, &v.Version)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, domain.ErrOrderNotFound
	}
	if err != nil {
		return nil, err
	}
	v.Status = domain.OrderStatus(status)
	if err := json.Unmarshal(items, &v.Items); err != nil {
		return nil, err
	}
	return &v, nil
}

// OrderView returns the view of orderID, or domain.ErrOrderNotFound. A row
// claimed by an event that changed nothing is not a view yet.
func (c *Catalog) OrderView(ctx context.Context, orderID string) (*domain.OrderView, error) {
	return dbpool.ReadRetry(ctx, c.pool, func(ctx context.Context) (*domain.OrderView, error) {
		return scanView(c.pool.QueryRow(ctx, `SELECT `+viewColumns+` FROM order_views WHERE order_id = $1 AND status <> ''`, orderID))
	})
}
