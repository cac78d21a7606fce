package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Admin is the operator's view of the outbox: what is parked, and what to do
// with it. Parked messages are ones the relay gave up on (MaxAttempts
// failures, or a failure no retry can fix); they hold nothing up.
type Admin struct {
	pool *pgxpool.Pool
}

// NewAdmin returns an Admin for the outbox in pool's database.
func NewAdmin(pool *pgxpool.Pool) *Admin { return &Admin{pool: pool} }

// ParkedMessage is a message the relay parked.
type ParkedMessage struct {
	ID        int64 // row id: what Retry and Discard take
	MessageID string
	Topic     string
	Key       string
	Type      string
	Attempts  int
	LastError string
	CreatedAt time.Time
	ParkedAt  time.Time
}

// ListParked returns up to limit parked messages, oldest parked first.
func (a *Admin) ListParked(ctx context.Context, limit int) ([]ParkedMessage, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("outbox: ListParked: limit must be positive, got %d", limit)
	}
	rows, err := a.pool.Query(ctx, `
SELECT id, message_id::text, topic, key, message_type, attempts, COALESCE(last_error, ''), created_at, parked_at
FROM sagabox.outbox WHERE parked_at IS NOT NULL ORDER BY parked_at, id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: list parked: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ParkedMessage, error) {
		var p ParkedMessage
		err := r.Scan(&p.ID, &p.MessageID, &p.Topic, &p.Key, &p.Type, &p.Attempts, &p.LastError, &p.CreatedAt, &p.ParkedAt)
		return p, err
	})
}

// Retry puts parked messages back in line with their attempts reset. Note
// that a retried message is published after the messages of its key that
// went out while it was parked. It returns how many it unparked and
// ErrNotFound when none of ids was parked.
func (a *Admin) Retry(ctx context.Context, ids ...int64) (int64, error) {
	tag, err := a.pool.Exec(ctx, `
UPDATE sagabox.outbox SET parked_at = NULL, attempts = 0, next_attempt_at = NULL
WHERE id = ANY($1) AND parked_at IS NOT NULL`, ids)
	if err != nil {
		return 0, fmt.Errorf("outbox: retry parked: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return 0, fmt.Errorf("%w: none of %v is parked", ErrNotFound, ids)
	}
	return tag.RowsAffected(), nil
}

// Discard deletes parked messages for good. It returns how many it deleted
// and ErrNotFound when none of ids was parked.
func (a *Admin) Discard(ctx context.Context, ids ...int64) (int64, error) {
	tag, err := a.pool.Exec(ctx, `DELETE FROM sagabox.outbox WHERE id = ANY($1) AND parked_at IS NOT NULL`, ids)
	if err != nil {
		return 0, fmt.Errorf("outbox: discard parked: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return 0, fmt.Errorf("%w: none of %v is parked", ErrNotFound, ids)
	}
	return tag.RowsAffected(), nil
}

// Stats is a snapshot of the outbox.
type Stats struct {
	Pending          int64         // committed, not yet published, not parked
	Parked           int64         // waiting for an operator
	OldestPendingAge time.Duration // zero when nothing is pending
}

// Stats counts pending and parked messages.
func (a *Admin) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	var age float64
	if err := a.pool.QueryRow(ctx, statsSQL).Scan(&s.Pending, &s.Parked, &age); err != nil {
		return s, fmt.Errorf("outbox: stats: %w", err)
	}
	s.OldestPendingAge = time.Duration(age * float64(time.Second))
	return s, nil
}
