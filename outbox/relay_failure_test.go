package outbox_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

// PITFALLS 1: a poller that remembers the highest id it published loses a
// row whose transaction drew a lower id but committed later. The relay keeps
// no high-water mark, so the late row is still found.
func TestRelayLosesNothingWhenATransactionCommitsLate(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 2)
	ctx := testkit.Ctx(t)
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.ArchiveFor = time.Hour }) // keep the ids to check the gap

	late, err := rb.pool.Begin(ctx)
	testkit.Must(t, err, "begin")
	testkit.Must(t, rb.writer.Write(ctx, late, outbox.Message{Topic: "orders", Key: "late", Type: orderPlacedType, Value: orderPlaced{OrderID: "late"}}), "write late")
	// Higher ids commit and get published while the late one is open.
	want := rb.writeSeq(t, "orders", 3, 30)
	recs := testkit.ReadAll(t, rb.brokers, "orders", 30, 20*time.Second)
	if len(recs) != 30 {
		t.Fatalf("read %d of the 30 early commits", len(recs))
	}
	testkit.Must(t, late.Commit(ctx), "commit late")
	want["late"] = []int64{0}

	recs = testkit.ReadAll(t, rb.brokers, "orders", 31, 20*time.Second)
	if res := count(t, rb.codec, recs, want); res != (tally{}) {
		t.Fatalf("lost/duplicated/reordered: %+v", res)
	}
	var lateID, maxID int64
	testkit.Eventually(t, 5*time.Second, "late row archived", func() bool {
		return rb.pool.QueryRow(ctx, `SELECT min(id) FILTER (WHERE key = 'late'), max(id) FROM sagabox.outbox_archive`).Scan(&lateID, &maxID) == nil
	})
	if lateID >= maxID {
		t.Fatalf("test did not create a sequence gap: late id %d, max id %d", lateID, maxID)
	}
}

// PITFALLS 2: xid-horizon pollers stall while any unrelated transaction is
// open. Ours keeps publishing with a writing transaction held open across the
// whole test.
func TestRelayKeepsPublishingWhileAnUnrelatedTransactionIsOpen(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 2)
	ctx := testkit.Ctx(t)
	_, err := rb.pool.Exec(ctx, `CREATE TABLE report (id int)`)
	testkit.Must(t, err, "create")
	long, err := rb.pool.Begin(ctx)
	testkit.Must(t, err, "begin")
	defer long.Rollback(ctx)
	_, err = long.Exec(ctx, `INSERT INTO report VALUES (1)`) // holds an xid: the horizon stays behind it
	testkit.Must(t, err, "insert")

	rb.startRelay(t, nil)
	total := 0
	want := map[string][]int64{}
	for round := 0; round < 3; round++ {
		for k, v := range rb.writeSeq(t, fmt.Sprintf("orders-%d", round), 2, 20) {
			want[fmt.Sprintf("%d/%s", round, k)] = v
		}
		total += 20
		recs := testkit.ReadAll(t, rb.brokers, fmt.Sprintf("orders-%d", round), 20, 10*time.Second)
		if len(recs) != 20 {
			t.Fatalf("round %d: only %d of 20 published while another transaction is open", round, len(recs))
		}
	}
	var open bool
	testkit.Must(t, rb.pool.QueryRow(ctx, `SELECT count(*) > 0 FROM pg_stat_activity WHERE state = 'idle in transaction' AND datname = current_database()`).Scan(&open), "activity")
	if !open {
		t.Fatal("the unrelated transaction was not open during the test")
	}
}

// PITFALLS 4, 11, 12: several relays, produce errors, timeouts that still
// append, a broker restart and a relay that stops mid-run. Per key, nothing
// is lost or reordered; duplicates are counted.
func TestRelayKeepsPerKeyOrderWithSeveralRelaysAndBrokerFaults(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 6, kfake.NumBrokers(2))
	ctx := testkit.Ctx(t)
	const keys, perKey = 12, 40

	var relays []func()
	for i := 0; i < 3; i++ {
		_, stop := rb.startRelay(t, func(c *outbox.RelayConfig) {
			c.ID = fmt.Sprintf("relay-%d", i)
			c.BatchSize = 50
		})
		relays = append(relays, stop)
	}

	// Faults while writing: refused produces, timeouts after append.
	notLeader := rb.kafka.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotLeaderForPartition, Count: 20})
	timedOut := rb.kafka.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.RequestTimedOut, Count: 4})

	want := map[string][]int64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for k := 0; k < keys; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			key := fmt.Sprintf("k%d", k)
			for seq := int64(0); seq < perKey; seq++ {
				err := pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
					return rb.writer.Write(ctx, tx, outbox.Message{Topic: "orders", Key: key, Type: orderPlacedType, Value: orderPlaced{OrderID: key, Seq: seq}})
				})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				want[key] = append(want[key], seq)
				mu.Unlock()
				if seq == perKey/2 && k == 0 {
					// Halfway: restart a broker and stop one relay.
					testkit.Must(t, rb.kafka.RemoveNode(0), "remove node")
					relays[0]()
					_, _, err := rb.kafka.AddNode(0, 0)
					testkit.Must(t, err, "add node")
				}
			}
		}(k)
	}
	wg.Wait()

	recs := testkit.ReadAll(t, rb.brokers, "orders", keys*perKey, 60*time.Second)
	testkit.Eventually(t, 30*time.Second, "outbox drained", func() bool { return pendingCount(t, rb) == 0 })
	recs = testkit.ReadAll(t, rb.brokers, "orders", len(recs)+1, 2*time.Second) // pick up any late duplicates
	res := count(t, rb.codec, recs, want)
	t.Logf("records=%d committed=%d lost=%d duplicated=%d reordered=%d faults: not-leader=%d timed-out=%d",
		len(recs), keys*perKey, res.lost, res.duplicated, res.reordered, notLeader.Hits(), timedOut.Hits())
	if notLeader.Hits() == 0 || timedOut.Hits() == 0 {
		t.Fatalf("faults were not exercised: not-leader=%d timed-out=%d", notLeader.Hits(), timedOut.Hits())
	}
	if res.lost != 0 || res.reordered != 0 {
		t.Fatalf("lost %d, reordered %d", res.lost, res.reordered)
	}
}

// A relay killed between "Kafka acknowledged the batch" and "rows marked
// published" must not lose anything: the next relay publishes the batch
// again. Duplicates are bounded by the batch in flight.
func TestRelayKilledMidBatchLosesNothingAndDuplicatesAtMostOneBatch(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 3)
	ctx := testkit.Ctx(t)
	const batch = 100
	want := rb.writeSeq(t, "orders", 5, 500)

	// The doomed relay gets its own pool, so we can cut its connections.
	cfg, err := pgxpool.ParseConfig(rb.db.URL)
	testkit.Must(t, err, "parse")
	cfg.ConnConfig.RuntimeParams["application_name"] = "doomed-relay"
	doomedPool, err := pgxpool.NewWithConfig(ctx, cfg)
	testkit.Must(t, err, "pool")
	defer doomedPool.Close()

	// When the doomed relay's second produce request is acknowledged, kill
	// its database connections before it can mark the batch.
	var produces atomic.Int32
	killed := make(chan struct{})
	rb.kafka.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		rb.kafka.KeepControl()
		if produces.Add(1) == 2 {
			_, err := rb.pool.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'doomed-relay'`)
			if err != nil {
				t.Error(err)
			}
			close(killed)
		}
		return nil, nil, false
	})
	_, stop := rb.startRelay(t, func(c *outbox.RelayConfig) {
		c.ID = "doomed"
		c.Pool = doomedPool
		c.BatchSize = batch
	})
	<-killed
	stop() // the process is gone: it never marks that batch
	doomedPool.Close()

	rb.startRelay(t, func(c *outbox.RelayConfig) { c.ID = "successor"; c.BatchSize = batch })
	testkit.Eventually(t, 30*time.Second, "outbox drained", func() bool { return pendingCount(t, rb) == 0 })
	recs := testkit.ReadAll(t, rb.brokers, "orders", 500+batch+1, 5*time.Second)
	res := count(t, rb.codec, recs, want)
	t.Logf("records=%d lost=%d duplicated=%d reordered=%d", len(recs), res.lost, res.duplicated, res.reordered)
	if res.lost != 0 || res.reordered != 0 {
		t.Fatalf("lost %d, reordered %d", res.lost, res.reordered)
	}
	if inFlight := outbox.DefaultWorkers * batch; res.duplicated > inFlight {
		t.Fatalf("%d duplicates, more than the %d in flight (%d workers of %d)", res.duplicated, inFlight, outbox.DefaultWorkers, batch)
	}
	if res.duplicated == 0 {
		t.Fatalf("the kill did not hit a batch in flight (no duplicate): the test proved nothing")
	}
}

// PITFALLS 13, 15: with the Schema Registry unreachable, messages wait (their
// attempts are not spent) and drain once it is back.
func TestRelayWaitsForTheSchemaRegistryThenDrains(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 2)
	ctx := testkit.Ctx(t)
	var down atomic.Bool
	var refused atomic.Int32
	down.Store(true)
	rb.registry.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if down.Load() {
			refused.Add(1)
			http.Error(w, `{"error_code":50301,"message":"registry down"}`, http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	want := rb.writeSeq(t, "orders", 4, 40)
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.MaxAttempts = 2 })

	testkit.Eventually(t, 10*time.Second, "registry errors recorded", func() bool {
		var n int
		_ = rb.pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.outbox WHERE last_error LIKE '%registry%'`).Scan(&n)
		return n > 0
	})
	// Many relay cycles with the registry down, counted at the registry.
	seen := refused.Load()
	testkit.Eventually(t, 30*time.Second, "ten more refused registry requests", func() bool { return refused.Load() >= seen+10 })
	var parked, attempts int
	testkit.Must(t, rb.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE parked_at IS NOT NULL), COALESCE(max(attempts), 0) FROM sagabox.outbox`).Scan(&parked, &attempts), "state")
	if parked != 0 || attempts != 0 {
		t.Fatalf("a registry outage spent attempts (max %d) or parked %d messages", attempts, parked)
	}
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 1, 500*time.Millisecond); len(recs) != 0 {
		t.Fatalf("%d records published without a schema ID", len(recs))
	}

	down.Store(false)
	recs := testkit.ReadAll(t, rb.brokers, "orders", 40, 20*time.Second)
	if res := count(t, rb.codec, recs, want); res != (tally{}) || len(recs) != 40 {
		t.Fatalf("after the registry returned: %d records, %+v", len(recs), res)
	}
}

// PITFALLS 5: a message Kafka will never take (over the topic's size limit)
// is parked with its error and does not hold up the messages behind it, of
// its own key or others. An operator can then list, retry and discard it.
func TestRelayParksAPoisonMessageAndKeepsGoing(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4000"}))
	ctx := testkit.Ctx(t)
	write := func(key string, seq int64, note string) {
		testkit.Must(t, rb.writer.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Key: key, Type: orderPlacedType,
			Value: orderPlaced{OrderID: key, Seq: seq, Note: note}}), "write")
	}
	write("a", 0, "")
	write("a", 1, strings.Repeat("x", 10000)) // poison: over the broker's 4000 bytes
	write("a", 2, "")
	write("b", 0, "")
	rb.startRelay(t, nil)

	recs := testkit.ReadAll(t, rb.brokers, "orders", 3, 20*time.Second)
	if len(recs) != 3 {
		t.Fatalf("poison message held up the others: read %d of 3", len(recs))
	}
	admin := outbox.NewAdmin(rb.pool)
	var parked []outbox.ParkedMessage
	testkit.Eventually(t, 10*time.Second, "poison parked", func() bool {
		var err error
		parked, err = admin.ListParked(ctx, 10)
		return err == nil && len(parked) == 1
	})
	p := parked[0]
	if p.Key != "a" || p.Attempts != 1 || !strings.Contains(p.LastError, "too large") {
		t.Fatalf("parked message: %+v", p)
	}

	// Retry puts it back in line (it fails again: still too big); discard
	// removes it for good.
	n, err := admin.Retry(ctx, p.ID)
	testkit.Must(t, err, "retry")
	if n != 1 {
		t.Fatalf("retried %d", n)
	}
	testkit.Eventually(t, 10*time.Second, "parked again", func() bool {
		ps, err := admin.ListParked(ctx, 10)
		return err == nil && len(ps) == 1 && ps[0].Attempts == 1
	})
	n, err = admin.Discard(ctx, p.ID)
	testkit.Must(t, err, "discard")
	if n != 1 {
		t.Fatalf("discarded %d", n)
	}
	if ps, _ := admin.ListParked(ctx, 10); len(ps) != 0 {
		t.Fatalf("still parked after discard: %+v", ps)
	}
	if _, err := admin.Discard(ctx, p.ID); err == nil {
		t.Fatal("discarding a message twice should say it is not there")
	}
}

// PITFALLS 4 and 5 together: when a key's oldest message fails and backs
// off, the later messages of that key wait for it (no overtaking on retry),
// while other keys keep moving.
func TestRelayRetryDoesNotLetLaterMessagesOfAKeyOvertake(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	ctx := testkit.Ctx(t)
	want := rb.writeSeq(t, "orders", 1, 10) // key k0, seq 0..9
	// Fail the first produce and the relay's three quick retries of it.
	fault := rb.kafka.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "orders", Err: kerr.NotLeaderForPartition, Count: 4})
	rb.startRelay(t, func(c *outbox.RelayConfig) {
		c.RetryBackoff = 1500 * time.Millisecond
		c.MaxRetryBackoff = 3 * time.Second
	})

	testkit.Eventually(t, 10*time.Second, "first message backing off", func() bool {
		var n int
		_ = rb.pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.outbox WHERE attempts = 1 AND next_attempt_at > now()`).Scan(&n)
		return n == 1
	})
	// Another key on another topic goes out while k0 waits.
	testkit.Must(t, rb.writer.Write(ctx, rb.pool, outbox.Message{Topic: "other", Key: "x", Type: orderPlacedType, Value: orderPlaced{OrderID: "x"}}), "write other")
	if recs := testkit.ReadAll(t, rb.brokers, "other", 1, 1200*time.Millisecond); len(recs) != 1 {
		t.Fatal("another key was held up by k0's backoff")
	}
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 1, 100*time.Millisecond); len(recs) != 0 {
		t.Fatalf("%d later messages of k0 overtook the one backing off", len(recs))
	}
	recs := testkit.ReadAll(t, rb.brokers, "orders", 10, 20*time.Second)
	if res := count(t, rb.codec, recs, want); res != (tally{}) || len(recs) != 10 {
		t.Fatalf("read %d: %+v", len(recs), res)
	}
	if fault.Hits() != 4 {
		t.Fatalf("fault hit %d times, want 4", fault.Hits())
	}
}

// A relay that dies without a word (no lease release) is replaced within
// a few seconds: its leases expire after LeaseTTL and a survivor takes its
// shards; before they expire nobody else publishes them.
func TestRelayThatDiesIsReplacedAfterItsLeasesExpire(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 2)
	ctx := testkit.Ctx(t)
	const ttl = 2 * time.Second

	cfg, err := pgxpool.ParseConfig(rb.db.URL)
	testkit.Must(t, err, "parse")
	deadPool, err := pgxpool.NewWithConfig(ctx, cfg)
	testkit.Must(t, err, "pool")
	_, stop := rb.startRelay(t, func(c *outbox.RelayConfig) { c.ID = "a-dies"; c.Pool = deadPool; c.LeaseTTL = ttl })
	testkit.Eventually(t, 10*time.Second, "the first relay owns every shard", func() bool {
		var n int
		_ = rb.pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.outbox_leases WHERE owner = 'a-dies'`).Scan(&n)
		return n == outbox.NumShards
	})
	// The process vanishes: its database connections go first, so it
	// cannot hand its leases back.
	deadPool.Close()
	stop()
	died := time.Now()

	rb.startRelay(t, func(c *outbox.RelayConfig) { c.ID = "b-survives"; c.LeaseTTL = ttl })
	want := rb.writeSeq(t, "orders", 4, 40)
	// Measured on the relay's side: a consumer that subscribed before the
	// topic existed takes seconds of its own to notice it.
	testkit.Eventually(t, 20*time.Second, "the survivor published everything", func() bool { return pendingCount(t, rb) == 0 })
	took := time.Since(died)
	recs := testkit.ReadAll(t, rb.brokers, "orders", 40, 20*time.Second)
	if res := count(t, rb.codec, recs, want); res != (tally{}) || len(recs) != 40 {
		t.Fatalf("read %d: %+v", len(recs), res)
	}
	t.Logf("the survivor published %s after the first relay died (lease TTL %s)", took.Round(10*time.Millisecond), ttl)
	if took > 3*ttl {
		t.Fatalf("takeover took %s, more than 3 lease TTLs", took)
	}
	if took < ttl/2 { // the dead relay renewed at most TTL/5 before it died
		t.Fatalf("the survivor published after %s: it took shards whose leases had not expired", took)
	}
}

// PITFALLS: a relay paused past its lease (a long GC, a frozen VM) wakes up
// believing it still owns its shards. Fenced leases: the paused relay must
// not publish the batch it fetched before the pause, nor mark rows of
// shards another relay took over; per key nothing is inverted on the topic
// (no record with a lower sequence after a higher one, duplicates
// included) and duplicates stay within one batch.
func TestRelayPausedPastItsLeaseTouchesNothingOfTheShardsItLost(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 3)
	ctx := testkit.Ctx(t)
	const batch, ttl = 50, 2 * time.Second
	want := rb.writeSeq(t, "orders", 6, 300)

	// Relay A blocks its first worker between fetch and produce until the
	// test lets it go: the relay stops renewing, as a frozen process would.
	paused, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	regA := prometheus.NewRegistry()
	rb.startRelay(t, func(c *outbox.RelayConfig) {
		c.ID, c.BatchSize, c.LeaseTTL, c.Registerer = "a-paused", batch, ttl, regA
	}, func(r *outbox.Relay) {
		outbox.SetTestHookBeforeProduce(r, func() {
			first := false
			once.Do(func() { first = true })
			if first {
				close(paused)
				<-resume
			}
		})
	})
	select {
	case <-paused:
	case <-ctx.Done():
		t.Fatal("relay A never fetched a batch")
	}
	pausedAt := time.Now()

	// B takes the shards once A's leases expire and publishes everything,
	// the rows of A's frozen batch included.
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.ID, c.BatchSize, c.LeaseTTL = "b-takes-over", batch, ttl })
	testkit.Eventually(t, 60*time.Second, "B published everything while A is paused", func() bool { return pendingCount(t, rb) == 0 })
	if took := time.Since(pausedAt); took < ttl/2 {
		t.Fatalf("B drained %s after A paused, before A's leases (TTL %s) could expire: B took live leases", took, ttl)
	}

	// A wakes up, and both go on sharing the shards.
	close(resume)
	testkit.Eventually(t, 30*time.Second, "A renewed and holds shards again", func() bool {
		var n int
		_ = rb.pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.outbox_leases WHERE owner = 'a-paused'`).Scan(&n)
		return n > 0
	})
	for i := range 120 { // the same keys, their sequences going on
		key := fmt.Sprintf("k%d", i%6)
		writeNext(t, rb, want, key)
	}
	testkit.Eventually(t, 60*time.Second, "outbox drained", func() bool { return pendingCount(t, rb) == 0 })

	recs := testkit.ReadAll(t, rb.brokers, "orders", 420+batch+1, 5*time.Second)
	res := count(t, rb.codec, recs, want)
	inversions := 0
	last := map[string]int64{}
	s := rb.codec.MustSchema(orderPlacedType)
	for _, r := range recs {
		var v orderPlaced
		testkit.Must(t, avro.Unmarshal(s, r.Value[5:], &v), "decode")
		if prev, ok := last[r.Key]; ok && v.Seq < prev {
			inversions++
		}
		last[r.Key] = v.Seq
	}
	fenced, _ := metricValue(t, regA, "sagabox_outbox_fenced_messages_total")
	t.Logf("records=%d committed=420 lost=%d duplicated=%d reordered=%d inversions=%d fenced_by_A=%.0f",
		len(recs), res.lost, res.duplicated, res.reordered, inversions, fenced)
	if res.lost != 0 || res.reordered != 0 || inversions != 0 {
		t.Fatalf("lost %d, reordered %d, per-key inversions %d: the paused relay touched shards it had lost", res.lost, res.reordered, inversions)
	}
	if res.duplicated > batch {
		t.Fatalf("%d duplicates, more than one batch (%d)", res.duplicated, batch)
	}
	if fenced == 0 {
		t.Fatalf("A's frozen batch was not counted in sagabox_outbox_fenced_messages_total")
	}
}
