package outbox

import (
	"context"
	"time"
)

// cleanupSQL deletes one small batch of archived messages older than the
// retention, oldest first. Small batches keep each transaction short: no long
// locks, no vacuum pinned, no WAL burst.
const cleanupSQL = `
DELETE FROM sagabox.outbox_archive WHERE id IN (
	SELECT id FROM sagabox.outbox_archive
	WHERE published_at < now() - $1 * interval '1 millisecond'
	ORDER BY published_at
	LIMIT $2
)`

// statsSQL: the outbox table holds only pending and parked rows.
const statsSQL = `
SELECT
	(SELECT count(*) FROM sagabox.outbox WHERE parked_at IS NULL),
	(SELECT count(*) FROM sagabox.outbox WHERE parked_at IS NOT NULL),
	COALESCE((SELECT EXTRACT(EPOCH FROM now() - created_at) FROM sagabox.outbox
	          WHERE parked_at IS NULL ORDER BY id LIMIT 1), 0)`

// housekeeping runs on the relay that holds shard 0, so exactly one instance
// does it: it deletes published rows past the retention and refreshes the
// pending gauges.
func (r *Relay) housekeeping(ctx context.Context) {
	statsEvery := 5 * time.Second
	nextClean := time.Now().Add(r.cfg.CleanupInterval)
	tick := time.NewTicker(min(statsEvery, r.cfg.CleanupInterval))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !r.ownsZero.Load() {
			continue
		}
		var pending, parked int64
		var age float64
		if err := r.cfg.Pool.QueryRow(ctx, statsSQL).Scan(&pending, &parked, &age); err == nil {
			r.m.pending.Set(float64(pending))
			r.m.parkedTotal.Set(float64(parked))
			r.m.oldestAge.Set(age)
		}
		if r.cfg.Retention <= 0 || time.Now().Before(nextClean) {
			continue
		}
		nextClean = time.Now().Add(r.cfg.CleanupInterval)
		if n, err := r.Cleanup(ctx); err != nil {
			if ctx.Err() == nil {
				r.log.Warn("outbox relay: cleanup failed", "err", err)
			}
		} else if n > 0 {
			r.log.Info("outbox relay: cleaned published messages", "deleted", n)
		}
	}
}

// Cleanup deletes archived messages older than the retention, in batches of
// CleanupBatch, until none are left, and returns how many it deleted. The
// relay holding shard 0 calls it every CleanupInterval when Retention is
// set; call it yourself only from one place.
func (r *Relay) Cleanup(ctx context.Context) (int64, error) {
	var total int64
	for {
		tag, err := r.cfg.Pool.Exec(ctx, cleanupSQL, r.cfg.Retention.Milliseconds(), r.cfg.CleanupBatch)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(r.cfg.CleanupBatch) || ctx.Err() != nil {
			return total, nil
		}
	}
}
