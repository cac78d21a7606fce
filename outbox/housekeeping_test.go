package outbox_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

// PITFALLS 7: the table does not grow without bound. Without ArchiveFor a
// row is gone as soon as it is published; with it, published rows are
// archived and the cleaner deletes those older than ArchiveFor in small
// batches. Parked rows are never touched.
func TestPublishedRowsAreDeletedOrArchivedThenCleaned(t *testing.T) {
	t.Parallel()
	for _, archiveFor := range []time.Duration{0, time.Hour} {
		t.Run(fmt.Sprint("ArchiveFor=", archiveFor), func(t *testing.T) {
			t.Parallel()
			rb := setupRelay(t, 1)
			ctx := testkit.Ctx(t)
			rb.writeSeq(t, "orders", 3, 25)
			relay, _ := rb.startRelay(t, func(c *outbox.RelayConfig) {
				c.ArchiveFor = archiveFor
				c.CleanupBatch = 7
				c.CleanupInterval = time.Hour // we call Cleanup ourselves
			})
			testkit.Eventually(t, 10*time.Second, "published", func() bool { return pendingCount(t, rb) == 0 })
			var outboxRows, archived int
			testkit.Must(t, rb.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM sagabox.outbox), (SELECT count(*) FROM sagabox.outbox_archive)`).Scan(&outboxRows, &archived), "count")
			if outboxRows != 0 {
				t.Fatalf("%d published rows left in the outbox", outboxRows)
			}
			if archiveFor == 0 {
				if archived != 0 {
					t.Fatalf("archived %d rows without ArchiveFor", archived)
				}
				return
			}
			if archived != 25 {
				t.Fatalf("archived %d rows, want 25", archived)
			}
			// Age 20 archived rows past ArchiveFor; park a pending row.
			_, err := rb.pool.Exec(ctx, `UPDATE sagabox.outbox_archive SET published_at = now() - interval '2 hours' WHERE id IN (SELECT id FROM sagabox.outbox_archive ORDER BY id LIMIT 20)`)
			testkit.Must(t, err, "age rows")
			testkit.Must(t, rb.writer.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Key: "p", Type: orderPlacedType, Value: orderPlaced{OrderID: "p"}}), "write")
			_, err = rb.pool.Exec(ctx, `UPDATE sagabox.outbox SET parked_at = now() - interval '2 hours' WHERE key = 'p'`)
			testkit.Must(t, err, "park")

			n, err := relay.Cleanup(ctx)
			testkit.Must(t, err, "cleanup")
			if n != 20 {
				t.Fatalf("deleted %d rows, want the 20 older than ArchiveFor", n)
			}
			testkit.Must(t, rb.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM sagabox.outbox WHERE parked_at IS NOT NULL), (SELECT count(*) FROM sagabox.outbox_archive)`).Scan(&outboxRows, &archived), "count")
			if outboxRows != 1 || archived != 5 {
				t.Fatalf("left %d parked and %d archived rows, want 1 and 5", outboxRows, archived)
			}
		})
	}
}

// Writers in other processes wake the relay with NOTIFY when configured:
// with a poll interval of a minute, only the notification can explain a
// prompt delivery.
func TestRelayWakesOnNotifyFromAnotherProcess(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	ctx := testkit.Ctx(t)
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: rb.codec, NotifyChannel: "sagabox_outbox"})
	testkit.Must(t, err, "writer")
	const listen = "sagabox_outbox"
	// A first message, written without a notification before the relay
	// starts: once it is out, the relay's first poll is behind it.
	testkit.Must(t, rb.writer.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Key: "n", Type: orderPlacedType, Value: orderPlaced{OrderID: "first"}}), "write")
	rb.startRelay(t, func(c *outbox.RelayConfig) {
		c.PollInterval = time.Minute
		c.LeaseTTL = 5 * time.Minute // lease renewals (every TTL/5) must not poll for us either
		c.ListenChannel = listen
	})
	testkit.Eventually(t, 30*time.Second, "the first poll published the first message", func() bool { return pendingCount(t, rb) == 0 })
	testkit.Eventually(t, 30*time.Second, "the relay LISTENs", func() bool {
		var n int
		_ = rb.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n)
		return n > 0
	})
	testkit.Must(t, pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx, outbox.Message{Topic: "orders", Key: "n", Type: orderPlacedType, Value: orderPlaced{OrderID: "n"}})
	}), "write")
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 2, 20*time.Second); len(recs) != 2 {
		t.Fatal("the relay did not wake on NOTIFY")
	}
}

func TestRelayConfigIsValidated(t *testing.T) {
	t.Parallel()
	if _, err := outbox.NewRelay(outbox.RelayConfig{}); err == nil {
		t.Fatal("empty config accepted")
	}
}

func TestAdminStatsCountsPendingAndParked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testkit.Ctx(t)
	for i := 0; i < 3; i++ {
		testkit.Must(t, b.writer.Write(ctx, b.pool, outbox.Message{Topic: "orders", Key: "s", Type: orderPlacedType, Value: orderPlaced{OrderID: "s"}}), "write")
	}
	_, err := b.pool.Exec(ctx, `UPDATE sagabox.outbox SET parked_at = now() WHERE id = (SELECT min(id) FROM sagabox.outbox)`)
	testkit.Must(t, err, "park")
	_, err = b.pool.Exec(ctx, `UPDATE sagabox.outbox SET created_at = now() - interval '90 seconds' WHERE id = (SELECT max(id) FROM sagabox.outbox)`)
	testkit.Must(t, err, "age")
	s, err := outbox.NewAdmin(b.pool).Stats(ctx)
	testkit.Must(t, err, "stats")
	if s.Pending != 2 || s.Parked != 1 || s.OldestPendingAge > time.Minute {
		// the oldest pending is the second row (id order), written just now
		t.Fatalf("stats: %+v", s)
	}
}

// vacuumCount is how many times VACUUM (not autovacuum) ran on the outbox.
func vacuumCount(t *testing.T, rb *relayBundle) int64 {
	t.Helper()
	var n int64
	testkit.Must(t, rb.pool.QueryRow(context.Background(),
		`SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = 'sagabox' AND relname = 'outbox'`).Scan(&n), "vacuum count")
	return n
}

// PITFALLS 7, the other half: a queue table's dead rows. Every published
// message leaves one behind, and the relay's fetch reads through them until
// a vacuum clears them; autovacuum gets to a table at most once a minute. The
// relay vacuums the outbox itself after VacuumAfter removed rows, and not at
// all when told not to.
func TestRelayVacuumsTheOutboxAfterVacuumAfterRows(t *testing.T) {
	t.Parallel()
	for _, disable := range []bool{false, true} {
		t.Run(fmt.Sprint("DisableVacuum=", disable), func(t *testing.T) {
			t.Parallel()
			rb := setupRelay(t, 1)
			rb.startRelay(t, func(c *outbox.RelayConfig) { c.VacuumAfter = 40; c.DisableVacuum = disable })
			rb.writeSeq(t, "orders", 4, 120)
			testkit.Eventually(t, 10*time.Second, "published", func() bool { return pendingCount(t, rb) == 0 })
			if disable {
				// Progress, not time: as many rows again, published, is as
				// many short fetches past VacuumAfter again, each of which
				// would have asked for a vacuum.
				rb.writeSeq(t, "orders-2", 4, 120)
				testkit.Eventually(t, 10*time.Second, "published again", func() bool { return pendingCount(t, rb) == 0 })
				if n := vacuumCount(t, rb); n != 0 {
					t.Fatalf("vacuumed %d times with DisableVacuum", n)
				}
				return
			}
			testkit.Eventually(t, 5*time.Second, "vacuumed", func() bool { return vacuumCount(t, rb) >= 1 })
		})
	}
}

// At everyday load VacuumAfter rows (10,000 by default) take minutes to
// come, and every fetch until then reads through the dead rows: while its
// batches come back short the relay vacuums after a few hundred removed
// rows, at most once a second. Fails when only VacuumAfter triggers a
// vacuum.
func TestRelayVacuumsAtEverydayLoadBeforeVacuumAfterRows(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	rb.startRelay(t, nil)
	// Written in small transactions, published in short batches.
	for i := range 30 {
		rb.writeSeq(t, fmt.Sprint("orders-", i), 1, 20)
	}
	testkit.Eventually(t, 10*time.Second, "published", func() bool { return pendingCount(t, rb) == 0 })
	testkit.Eventually(t, 10*time.Second, "vacuumed with 600 rows removed (VacuumAfter is 10,000)", func() bool { return vacuumCount(t, rb) >= 1 })
	// And not once per short fetch: at most once a second.
	before, start := vacuumCount(t, rb), time.Now()
	for i := range 10 {
		rb.writeSeq(t, fmt.Sprint("more-", i), 1, 30)
	}
	testkit.Eventually(t, 10*time.Second, "published again", func() bool { return pendingCount(t, rb) == 0 })
	if n := vacuumCount(t, rb) - before; n > 2+int64(time.Since(start)/time.Second) {
		t.Fatalf("%d vacuums for 300 rows, more than one a second", n)
	}
}

// A relay whose database user does not own the outbox cannot vacuum it
// (Postgres only warns, it does not fail): the relay says so once, in its
// log, and goes on publishing.
func TestRelayThatMayNotVacuumSaysSoOnceAndGoesOn(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	ctx := testkit.Ctx(t)
	role := "sagabox_relay_" + strings.ToLower(rand.Text()[:8])
	for _, q := range []string{
		`CREATE ROLE ` + role + ` LOGIN`,
		`GRANT USAGE ON SCHEMA sagabox TO ` + role,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sagabox TO ` + role,
		`GRANT USAGE ON ALL SEQUENCES IN SCHEMA sagabox TO ` + role,
	} {
		_, err := rb.pool.Exec(ctx, q)
		testkit.Must(t, err, "%s", q)
	}
	t.Cleanup(func() {
		rb.pool.Close() // the database goes first (testkit), then the role
		admin, err := pgx.Connect(context.Background(), testkit.AdminURL())
		if err != nil {
			return
		}
		defer admin.Close(context.Background())
		_, _ = admin.Exec(context.Background(), `DROP DATABASE IF EXISTS `+pgx.Identifier{rb.db.Name}.Sanitize()+` WITH (FORCE)`)
		_, _ = admin.Exec(context.Background(), `DROP ROLE IF EXISTS `+role)
	})
	u, err := url.Parse(rb.db.URL)
	testkit.Must(t, err, "url")
	u.User = url.User(role)
	pool, err := pgxpool.New(ctx, u.String())
	testkit.Must(t, err, "pool as %s", role)
	t.Cleanup(pool.Close)

	var logs syncBuffer
	rb.startRelay(t, func(c *outbox.RelayConfig) {
		c.Pool = pool
		c.VacuumAfter = 10
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	rb.writeSeq(t, "orders", 4, 100)
	testkit.Eventually(t, 10*time.Second, "published", func() bool { return pendingCount(t, rb) == 0 })
	testkit.Eventually(t, 10*time.Second, "the relay said it cannot vacuum", func() bool { return strings.Contains(logs.String(), "cannot VACUUM") })
	// More rows past VacuumAfter: more chances to say it again.
	rb.writeSeq(t, "orders-2", 4, 100)
	testkit.Eventually(t, 10*time.Second, "published again", func() bool { return pendingCount(t, rb) == 0 })
	if n := strings.Count(logs.String(), "cannot VACUUM"); n != 1 {
		t.Fatalf("the relay said %d times that it cannot vacuum, want once; log:\n%s", n, logs.String())
	}
	if n := vacuumCount(t, rb); n != 0 {
		t.Fatalf("vacuum_count %d", n)
	}
}

// syncBuffer is a bytes.Buffer safe for the relay's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
