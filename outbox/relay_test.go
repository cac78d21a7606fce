package outbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

type relayBundle struct {
	*bundle
	kafka    *kfake.Cluster
	registry *srfake.Registry
	brokers  []string
}

func setupRelay(t *testing.T, partitions int, opts ...kfake.Opt) *relayBundle {
	t.Helper()
	b := setup(t)
	k := testkit.Kafka(t, partitions, opts...)
	return &relayBundle{bundle: b, kafka: k, registry: testkit.Registry(t), brokers: k.ListenAddrs()}
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("SAGABOX_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// startRelay runs a relay until the returned stop is called (or the test
// ends) and fails the test if Run returns an error.
func (rb *relayBundle) startRelay(t *testing.T, mod func(*outbox.RelayConfig), beforeRun ...func(*outbox.Relay)) (*outbox.Relay, func()) {
	t.Helper()
	cfg := outbox.RelayConfig{
		Pool:     rb.pool,
		Brokers:  rb.brokers,
		Registry: srclient.NewSchemaRegistryClient(rb.registry.URL()),
		Logger:   testLogger(t),
		LeaseTTL: 2 * time.Second, ProduceTimeout: 500 * time.Millisecond,
		PollInterval: 50 * time.Millisecond,
		RetryBackoff: 20 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	relay, err := outbox.NewRelay(cfg)
	testkit.Must(t, err, "new relay")
	for _, f := range beforeRun {
		f(relay)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := relay.Run(ctx); err != nil {
			t.Errorf("relay %s: %v", cfg.ID, err)
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				t.Errorf("relay did not stop within 15s")
			}
		})
	}
	t.Cleanup(stop)
	return relay, stop
}

// writeSeq commits n messages spread over keys, one transaction each, with a
// per-key sequence number in the value, and returns them per key in commit
// order.
func (rb *relayBundle) writeSeq(t *testing.T, topic string, keys, n int) map[string][]int64 {
	t.Helper()
	ctx := testkit.Ctx(t)
	want := map[string][]int64{}
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("k%d", i%keys)
		seq := int64(len(want[key]))
		testkit.Must(t, pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
			return rb.writer.Write(ctx, tx, outbox.Message{Topic: topic, Key: key, Type: orderPlacedType,
				Value: orderPlaced{OrderID: key, Seq: seq}})
		}), "write %d", i)
		want[key] = append(want[key], seq)
	}
	return want
}

// tally decodes what reached the topic and counts, against want (the
// committed sequence per key), what was lost, duplicated and reordered.
type tally struct{ lost, duplicated, reordered int }

func count(t *testing.T, codec *outbox.Codec, recs []testkit.Record, want map[string][]int64) tally {
	t.Helper()
	s := codec.MustSchema(orderPlacedType)
	got := map[string][]int64{}
	for _, r := range recs {
		var v orderPlaced
		if len(r.Value) < 5 {
			t.Fatalf("record too short: %x", r.Value)
		}
		testkit.Must(t, avro.Unmarshal(s, r.Value[5:], &v), "decode")
		if v.OrderID != r.Key {
			t.Fatalf("value for %s under key %s", v.OrderID, r.Key)
		}
		got[r.Key] = append(got[r.Key], v.Seq)
	}
	var res tally
	for key, seqs := range want {
		seen := map[int64]int{}
		next := int64(0) // highest sequence delivered in order so far + 1
		for _, s := range got[key] {
			seen[s]++
			if seen[s] > 1 {
				res.duplicated++
				continue
			}
			if s < next {
				res.reordered++
			}
			next = max(next, s+1)
		}
		for _, s := range seqs {
			if seen[s] == 0 {
				res.lost++
			}
		}
	}
	return res
}

func pendingCount(t *testing.T, rb *relayBundle) int {
	var n int
	testkit.Must(t, rb.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM sagabox.outbox WHERE parked_at IS NULL`).Scan(&n), "pending")
	return n
}

// The basic promise: every committed message reaches Kafka once, in order
// per key, framed in the Confluent wire format.
func TestRelayPublishesEveryCommittedMessageInOrder(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 4)
	want := rb.writeSeq(t, "orders", 8, 400)
	rb.startRelay(t, nil)
	recs := testkit.ReadAll(t, rb.brokers, "orders", 400, 20*time.Second)
	res := count(t, rb.codec, recs, want)
	if res != (tally{}) || len(recs) != 400 {
		t.Fatalf("read %d records: %+v", len(recs), res)
	}
	testkit.Eventually(t, 5*time.Second, "rows marked published", func() bool { return pendingCount(t, rb) == 0 })
	for _, r := range recs {
		if r.Headers[outbox.HeaderID] == "" || r.Headers[outbox.HeaderType] != orderPlacedType {
			t.Fatalf("missing headers: %v", r.Headers)
		}
	}
}

// Batching adapts to load. At everyday load (every batch comes back short)
// one fetch covers every shard the relay owns: one fetch per worker would
// spend a round trip per worker to find most shares empty. Under a backlog
// (a batch comes back full) the workers split the shards again, and the
// order per key holds in both. Fails when every round is a fetch per
// worker.
func TestRelayFetchesOnceAtEverydayLoadAndSplitsUnderABacklog(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 4)
	var mu sync.Mutex
	type fetch struct{ shards, rows int }
	var fetches []fetch
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.Workers = 2; c.BatchSize = 20 }, func(r *outbox.Relay) {
		outbox.SetTestHookFetch(r, func(shards, rows int) {
			mu.Lock()
			fetches = append(fetches, fetch{shards, rows})
			mu.Unlock()
		})
	})
	// Everyday load: one message at a time, each published before the next.
	want := map[string][]int64{}
	ctx := testkit.Ctx(t)
	for i := range 30 {
		key := fmt.Sprintf("k%d", i%10)
		writeNext(t, rb, want, key)
		testkit.Eventually(t, 10*time.Second, "published", func() bool { return pendingCount(t, rb) == 0 })
	}
	mu.Lock()
	quiet := fetches
	fetches = nil
	mu.Unlock()
	owned := outbox.NumShards
	for i, f := range quiet {
		if f.shards != owned {
			t.Fatalf("fetch %d of %d at everyday load covered %d shards, want all %d the relay owns (one fetch, not one per worker)", i, len(quiet), f.shards, owned)
		}
	}
	// A backlog: 200 rows at once, ten full batches.
	testkit.Must(t, pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
		for i := range 200 {
			key := fmt.Sprintf("k%d", i%10)
			seq := int64(len(want[key]))
			if err := rb.writer.Write(ctx, tx, outbox.Message{Topic: "orders", Key: key, Type: orderPlacedType,
				Value: orderPlaced{OrderID: key, Seq: seq}}); err != nil {
				return err
			}
			want[key] = append(want[key], seq)
		}
		return nil
	}), "backlog")
	recs := testkit.ReadAll(t, rb.brokers, "orders", 230, 20*time.Second)
	if res := count(t, rb.codec, recs, want); res != (tally{}) || len(recs) != 230 {
		t.Fatalf("read %d records: %+v", len(recs), res)
	}
	mu.Lock()
	defer mu.Unlock()
	split := 0
	for _, f := range fetches {
		if f.shards < owned {
			split++
		}
	}
	if split == 0 {
		t.Fatalf("under a backlog of 200 rows (batch size 20) no fetch was split between the workers: %v", fetches)
	}
}

// The bytes on the topic are plain Confluent-framed Avro: a Schema Registry
// client that is not ours (franz-go's sr.Serde) decodes them into the same
// values.
func TestRelayOutputDecodesWithAnotherSchemaRegistryClient(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	ctx := testkit.Ctx(t)
	in := []orderPlaced{{OrderID: "a", Seq: 1, Note: "first"}, {OrderID: "a", Seq: 2, Note: "ünïcødé"}}
	for _, v := range in {
		testkit.Must(t, rb.writer.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Key: v.OrderID, Type: orderPlacedType, Value: v}), "write")
	}
	rb.startRelay(t, nil)
	recs := testkit.ReadAll(t, rb.brokers, "orders", len(in), 20*time.Second)
	if len(recs) != len(in) {
		t.Fatalf("read %d records, want %d", len(recs), len(in))
	}

	cl, err := sr.NewClient(sr.URLs(rb.registry.URL()))
	testkit.Must(t, err, "sr client")
	subject := outbox.Subject("orders", orderPlacedType)
	ss, err := cl.SchemaByVersion(ctx, subject, -1)
	testkit.Must(t, err, "schema of %s", subject)
	parsed, err := avro.Parse(ss.Schema.Schema)
	testkit.Must(t, err, "parse registered schema")
	var serde sr.Serde
	serde.Register(ss.ID, orderPlaced{}, sr.DecodeFn(func(b []byte, v any) error { return avro.Unmarshal(parsed, b, v) }))
	for i, r := range recs {
		var got orderPlaced
		testkit.Must(t, serde.Decode(r.Value, &got), "serde decode")
		if got != in[i] {
			t.Fatalf("record %d: got %+v, want %+v", i, got, in[i])
		}
	}
}

// Several relays split the shards and, in normal operation, never publish a
// message twice; the metrics count what went out.
func TestRelaysSplitShardsWithoutDoublePublishing(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 4)
	reg := prometheus.NewRegistry()
	for i := 0; i < 3; i++ {
		rb.startRelay(t, func(c *outbox.RelayConfig) { c.ID = fmt.Sprintf("r%d", i); c.Registerer = reg })
	}
	ctx := testkit.Ctx(t)
	testkit.Eventually(t, 10*time.Second, "three relays sharing the shards", func() bool {
		var owners int
		_ = rb.pool.QueryRow(ctx, `SELECT count(DISTINCT owner) FROM sagabox.outbox_leases WHERE owner IS NOT NULL AND expires_at > now()`).Scan(&owners)
		return owners == 3
	})
	want := rb.writeSeq(t, "orders", 16, 320)
	testkit.Eventually(t, 20*time.Second, "drained", func() bool { return pendingCount(t, rb) == 0 })
	// Ask for one more than was written, to catch a duplicate.
	recs := testkit.ReadAll(t, rb.brokers, "orders", 321, 2*time.Second)
	if res := count(t, rb.codec, recs, want); res != (tally{}) {
		t.Fatalf("%d records: %+v", len(recs), res)
	}
	rows, err := rb.pool.Query(ctx, `SELECT count(*) FROM sagabox.outbox_leases WHERE owner IS NOT NULL GROUP BY owner`)
	testkit.Must(t, err, "leases")
	perOwner, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	testkit.Must(t, err, "leases")
	if len(perOwner) != 3 || slices.Min(perOwner) < outbox.NumShards/3 {
		t.Fatalf("shards per relay: %v, want %d split evenly over 3", perOwner, outbox.NumShards)
	}
	published, ok := metricValue(t, reg, "sagabox_outbox_published_total", "topic", "orders")
	if !ok || published != 320 {
		t.Fatalf("published_total = %v (present: %v), want 320", published, ok)
	}
	// The three relays share one owned_shards gauge: it adds up.
	testkit.Eventually(t, 5*time.Second, "owned_shards summed over the relays", func() bool {
		n, _ := metricValue(t, reg, "sagabox_outbox_owned_shards")
		return n == outbox.NumShards
	})
}

// writeNext writes key's next message (its sequence: how many want holds
// for it) in a transaction of its own, and records it in want.
func writeNext(t *testing.T, rb *relayBundle, want map[string][]int64, key string) {
	t.Helper()
	ctx := testkit.Ctx(t)
	seq := int64(len(want[key]))
	testkit.Must(t, pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
		return rb.writer.Write(ctx, tx, outbox.Message{Topic: "orders", Key: key, Type: orderPlacedType,
			Value: orderPlaced{OrderID: key, Seq: seq}})
	}), "write %s/%d", key, seq)
	want[key] = append(want[key], seq)
}
