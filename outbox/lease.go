package outbox

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// leases decides which shards this relay publishes. Every relay heartbeats
// into sagabox.outbox_relays; the live relays, sorted by ID, split the shards
// round-robin (relay i of n wants shards s with s % n == i). A relay takes a
// shard's lease only when it is free, expired or already its own, and gives
// up the shards it no longer wants between two batches, so one shard never
// has two publishers at once while both are healthy. A relay that dies stops
// renewing; its leases expire after the TTL and the survivors take them.
//
// Health is not enough: a relay paused past the TTL (a long GC, a frozen VM,
// a blocked worker) wakes up believing it still owns its shards. Leases are
// therefore fenced. A shard's epoch grows each time it changes hands, and
// every statement that reads a batch or marks it carries the (shard, epoch)
// pairs the relay took: it touches only rows of shards whose lease row still
// names this relay at that epoch. A Kafka produce cannot be fenced by
// Postgres, so the relay also checks its local lease deadline (taken before
// the renewing statement, hence conservative) right before producing and
// drops a batch whose lease may have lapsed while it waited.
type leases struct {
	pool *pgxpool.Pool
	id   string
	ttl  time.Duration

	owned    []int16
	epochs   []int64   // epochs[i] is the epoch at which owned[i] was taken
	deadline time.Time // local clock: the leases are ours until then
	lastTick time.Time
}

// epochsOf returns the epochs of the given owned shards, for the fenced
// statements.
func (l *leases) epochsOf(shards []int16) []int64 {
	out := make([]int64, len(shards))
	for i, s := range shards {
		if j, ok := slices.BinarySearch(l.owned, s); ok {
			out[i] = l.epochs[j]
		} else {
			out[i] = -1 // never a real epoch: the statement touches nothing of it
		}
	}
	return out
}

// tick heartbeats, rebalances and renews. It must be called between batches
// only: releasing a shard while a batch of it is in flight would let another
// relay publish the same key concurrently.
func (l *leases) tick(ctx context.Context) error {
	start := time.Now()
	ttl := l.ttl.Seconds()
	if _, err := l.pool.Exec(ctx, `
INSERT INTO sagabox.outbox_relays (relay_id, heartbeat_at) VALUES ($1, now())
ON CONFLICT (relay_id) DO UPDATE SET heartbeat_at = now()`, l.id); err != nil {
		return fmt.Errorf("outbox relay: heartbeat: %w", err)
	}
	rows, err := l.pool.Query(ctx, `
SELECT relay_id FROM sagabox.outbox_relays
WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY relay_id`, ttl)
	if err != nil {
		return fmt.Errorf("outbox relay: live relays: %w", err)
	}
	live, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("outbox relay: live relays: %w", err)
	}
	me := slices.Index(live, l.id)
	var want []int16
	if me >= 0 {
		for s := 0; s < NumShards; s++ {
			if s%len(live) == me {
				want = append(want, int16(s))
			}
		}
	}
	if _, err := l.pool.Exec(ctx, `
UPDATE sagabox.outbox_leases SET owner = NULL, expires_at = '-infinity'
WHERE owner = $1 AND NOT (shard = ANY($2))`, l.id, want); err != nil {
		return fmt.Errorf("outbox relay: release leases: %w", err)
	}
	rows, err = l.pool.Query(ctx, `
UPDATE sagabox.outbox_leases
SET owner = $1, expires_at = now() + make_interval(secs => $3),
    epoch = epoch + CASE WHEN owner IS DISTINCT FROM $1 THEN 1 ELSE 0 END
WHERE shard = ANY($2) AND (owner = $1 OR owner IS NULL OR expires_at < now())
RETURNING shard, epoch`, l.id, want, ttl)
	if err != nil {
		return fmt.Errorf("outbox relay: take leases: %w", err)
	}
	type lease struct {
		Shard int16
		Epoch int64
	}
	taken, err := pgx.CollectRows(rows, pgx.RowToStructByPos[lease])
	if err != nil {
		return fmt.Errorf("outbox relay: take leases: %w", err)
	}
	slices.SortFunc(taken, func(a, b lease) int { return int(a.Shard) - int(b.Shard) })
	l.owned, l.epochs = make([]int16, len(taken)), make([]int64, len(taken))
	for i, t := range taken {
		l.owned[i], l.epochs[i] = t.Shard, t.Epoch
	}
	l.deadline = start.Add(l.ttl)
	l.lastTick = start
	// Forget relays that have been gone for a while.
	_, _ = l.pool.Exec(ctx, `DELETE FROM sagabox.outbox_relays WHERE heartbeat_at < now() - make_interval(secs => $1)`, 10*ttl)
	return nil
}

// release gives up every lease at shutdown so another relay can take over at
// once instead of waiting for the TTL.
func (l *leases) release(ctx context.Context) error {
	l.owned, l.epochs = nil, nil
	l.deadline = time.Time{}
	if _, err := l.pool.Exec(ctx, `UPDATE sagabox.outbox_leases SET owner = NULL, expires_at = '-infinity' WHERE owner = $1`, l.id); err != nil {
		return err
	}
	_, err := l.pool.Exec(ctx, `DELETE FROM sagabox.outbox_relays WHERE relay_id = $1`, l.id)
	return err
}
