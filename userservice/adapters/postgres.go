// Package adapters connects userservice to Postgres and implements password
// hashing.
package adapters

import (
	"context"
	"embed"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/migrate"
	"github.com/sagabox/sagabox/internal/platform/dbpool"
	"github.com/sagabox/sagabox/userservice/domain"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Component is the name userservice's migrations are recorded under.
const Component = "userservice"

// Migrate creates or upgrades userservice's tables.
func Migrate(ctx context.Context, db migrate.Beginner) error {
	_, err := migrate.Apply(ctx, db, Component, migrations, "migrations")
	return err
}

// Users is the Postgres repository of users and credit charges.
type Users struct {
	pool *pgxpool.Pool
}

// NewUsers returns a repository on pool.
func NewUsers(pool *pgxpool.Pool) *Users { return &Users{pool: pool} }

const userColumns = `id, email, name, password_hash, role, credit_cents, created_at`

func scanUser(row pgx.Row) (*domain.User, error) {
	var u domain.User
	err := row.Scan(&u.ID, &u.Email, &u.Name, &u.PasswordHash, &u.Role, &u.CreditCents, &u.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, domain.ErrUserNotFound
	}
	if err != nil {
		return nil, err
	}
	return &u, nil
}

// Add stores a new user. A taken email (in any letter case) is
// domain.ErrEmailTaken.
func (r *Users) Add(ctx context.Context, u *domain.User) error {
	_, err := r.pool.Exec(ctx, `INSERT INTO users (`+userColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		u.ID, u.Email, u.Name, u.PasswordHash, u.Role, u.CreditCents, u.CreatedAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return domain.ErrEmailTaken
	}
	if err != nil {
		return fmt.Errorf("insert user: %w", err)
	}
	return nil
}

// ByID returns the user with id, or domain.ErrUserNotFound.
func (r *Users) ByID(ctx context.Context, id uuid.UUID) (*domain.User, error) {
	return dbpool.ReadRetry(ctx, r.pool, func(ctx context.Context) (*domain.User, error) {
		return scanUser(r.pool.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1`, id))
	})
}

// ByEmail returns the user with the (normalized) email, or
// domain.ErrUserNotFound.
func (r *Users) ByEmail(ctx context.Context, email string) (*domain.User, error) {
	return dbpool.ReadRetry(ctx, r.pool, func(ctx context.Context) (*domain.User, error) {
		return scanUser(r.pool.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE lower(email) = lower($1)`, email))
	})
}

// Update runs fn on the user with id inside a transaction holding the row
// lock, and saves what fn changed when it returns nil.
func (r *Users) Update(ctx context.Context, id uuid.UUID, fn func(*domain.User) error) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		u, err := scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1 FOR UPDATE`, id))
		if err != nil {
			return err
		}
		if err := fn(u); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE users SET name = $2, password_hash = $3, role = $4, credit_cents = $5 WHERE id = $1`,
			u.ID, u.Name, u.PasswordHash, u.Role, u.CreditCents)
		return err
	})
}

// UpdateCharge runs fn on the charge of orderID and the user it concerns,
// inside tx (the caller's: the saga participant's, whose inbox row and reply
// commit with it), and saves both. The user row is locked first, so two
// commands for the same user, or duplicates of one command, queue up rather
// than both reading the old balance; user is nil when no such user exists.
// The charge starts with Status ChargeNone when the order is new.
func (r *Users) UpdateCharge(ctx context.Context, tx pgx.Tx, orderID, userID string,
	fn func(c *domain.Charge, u *domain.User) error) error {
	var user *domain.User
	if id, err := uuid.Parse(userID); err == nil {
		user, err = scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1 FOR UPDATE`, id))
		if err != nil && !errors.Is(err, domain.ErrUserNotFound) {
			return fmt.Errorf("lock user: %w", err)
		}
	}
	c := &domain.Charge{OrderID: orderID, UserID: userID}
	var status string
	err := tx.QueryRow(ctx, `SELECT user_id, amount_cents, status, reason FROM credit_charges WHERE order_id = $1 FOR UPDATE`,
		orderID).Scan(&c.UserID, &c.AmountCents, &status, &c.Reason)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("read charge: %w", err)
	default:
		c.Status = domain.ChargeStatus(status)
	}
	before := *c
	var balanceBefore int64
	if user != nil {
		balanceBefore = user.CreditCents
	}
	if err := fn(c, user); err != nil {
		return err
	}
	if *c != before {
		// A concurrent first command for an order of an unknown user (no row
		// to lock) loses here with a unique violation and is retried.
		if _, err := tx.Exec(ctx, `
INSERT INTO credit_charges (order_id, user_id, amount_cents, status, reason) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (order_id) DO UPDATE SET amount_cents = $3, status = $4, reason = $5, updated_at = now()`,
			c.OrderID, c.UserID, c.AmountCents, string(c.Status), c.Reason); err != nil {
			return fmt.Errorf("save charge: %w", err)
		}
	}
	if user != nil && user.CreditCents != balanceBefore {
		if _, err := tx.Exec(ctx, `UPDATE users SET credit_cents = $2 WHERE id = $1`, user.ID, user.CreditCents); err != nil {
			return fmt.Errorf("save balance: %w", err)
		}
	}
	return nil
}

// Ping checks the database, for /readyz.
func (r *Users) Ping(ctx context.Context) error { return r.pool.Ping(ctx) }
