package outbox

import (
	"context"
	"time"
)

// cleanupSQL deletes one small batch of archived messages older than the
// ArchiveFor, oldest first. Small batches keep each transaction short: no long
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

// vacuumOutbox runs VACUUM on the outbox table (see
// RelayConfig.VacuumAfter). SKIP_LOCKED: if another relay is vacuuming it,
// this one does not queue up behind it. Postgres answers a VACUUM by a user
// that may not vacuum the table with a warning, not an error, so the relay
// checks first, once, and gives up for good if it may not.
func (r *Relay) vacuumOutbox(ctx context.Context) {
	n := r.removed.Swap(0)
	if !r.vacuumChecked {
		r.vacuumChecked = true
		var may bool
		err := r.cfg.Pool.QueryRow(ctx, `SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = 'sagabox.outbox'::regclass`).Scan(&may)
		if err != nil {
			r.vacuumChecked = false
			if ctx.Err() == nil {
				r.log.Warn("outbox relay: vacuum check failed", "err", err)
			}
			return
		}
		if !may {
			r.vacuumOff.Store(true)
			r.log.Warn("outbox relay: the relay's database user does not own sagabox.outbox and cannot VACUUM it; " +
				"tune autovacuum for the table instead (see RelayConfig.VacuumAfter)")
			return
		}
	}
	start := time.Now()
	if _, err := r.cfg.Pool.Exec(ctx, `VACUUM (SKIP_LOCKED) sagabox.outbox`); err != nil {
		if ctx.Err() == nil {
			r.log.Warn("outbox relay: vacuum failed", "err", err)
		}
		return
	}
	r.lastVacuum.Store(time.Now().UnixNano())
	r.m.vacuums.Inc()
	r.log.Debug("outbox relay: vacuumed the outbox", "removed_rows", n, "took", time.Since(start))
}

// housekeeping runs on every relay: it vacuums the outbox when this relay
// has removed VacuumAfter rows. On the relay that holds shard 0 (so exactly
// one instance does it) it also deletes archived rows older than ArchiveFor
// and refreshes the pending gauges.
func (r *Relay) housekeeping(ctx context.Context) {
	statsEvery := 5 * time.Second
	nextClean := time.Now().Add(r.cfg.CleanupInterval)
	tick := time.NewTicker(min(statsEvery, r.cfg.CleanupInterval))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.vacuum:
			r.vacuumOutbox(ctx)
			continue
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
		if r.cfg.ArchiveFor <= 0 || time.Now().Before(nextClean) {
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

// Cleanup deletes archived messages older than ArchiveFor, in batches of
// CleanupBatch, until none are left, and returns how many it deleted. The
// relay holding shard 0 calls it every CleanupInterval when ArchiveFor is
// set; call it yourself only from one place. Without ArchiveFor nothing is
// archived and it deletes nothing.
func (r *Relay) Cleanup(ctx context.Context) (int64, error) {
	var total int64
	if r.cfg.ArchiveFor <= 0 {
		return 0, nil
	}
	for {
		tag, err := r.cfg.Pool.Exec(ctx, cleanupSQL, r.cfg.ArchiveFor.Milliseconds(), r.cfg.CleanupBatch)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(r.cfg.CleanupBatch) || ctx.Err() != nil {
			return total, nil
		}
	}
}
