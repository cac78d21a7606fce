package outbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sr"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

// PITFALLS 10: the writer's W3C trace context survives the table and reaches
// Kafka as the traceparent header.
func TestTraceContextTravelsWithTheMessage(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled})
	ctx := trace.ContextWithSpanContext(testkit.Ctx(t), sc)
	testkit.Must(t, rb.writer.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Key: "t", Type: orderPlacedType, Value: orderPlaced{OrderID: "t"},
		CorrelationID: "corr-1", CausationID: "cause-1", SagaID: "saga-1", Headers: map[string]string{"tenant": "acme"}}), "write")
	rb.startRelay(t, nil)
	recs := testkit.ReadAll(t, rb.brokers, "orders", 1, 10*time.Second)
	if len(recs) != 1 {
		t.Fatal("not published")
	}
	h := recs[0].Headers
	want := map[string]string{
		outbox.HeaderTraceparent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		outbox.HeaderCorrelationID: "corr-1", outbox.HeaderCausationID: "cause-1", outbox.HeaderSagaID: "saga-1",
		"tenant": "acme", outbox.HeaderType: orderPlacedType,
	}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("header %s = %q, want %q", k, h[k], v)
		}
	}
}

// PITFALLS 11: a batch goes out as one produce request, not one round trip
// per message.
func TestRelaySendsABatchInOneProduceRequest(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 4)
	rb.writeSeq(t, "orders", 20, 600)
	produces := rb.kafka.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Observe: true, Count: -1})
	// One worker with BatchSize 1000: the whole backlog is one batch.
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.Workers = 1 })
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 600, 20*time.Second); len(recs) != 600 {
		t.Fatalf("read %d of 600", len(recs))
	}
	if n := produces.Hits(); n != 1 {
		t.Fatalf("%d produce requests for one batch of 600 messages over 4 partitions, want 1", n)
	}
}

// PITFALLS 6: no database transaction is held open while the relay talks to
// Kafka. While a produce request is being answered, none of the relay's
// connections is inside a transaction.
func TestRelayHoldsNoTransactionDuringKafkaIO(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	ctx := testkit.Ctx(t)
	rb.writeSeq(t, "orders", 2, 50)
	cfg, err := pgxpool.ParseConfig(rb.db.URL)
	testkit.Must(t, err, "parse")
	cfg.ConnConfig.RuntimeParams["application_name"] = "watched-relay"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	testkit.Must(t, err, "pool")
	defer pool.Close()

	var checked, inTx atomic.Int32
	rb.kafka.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		rb.kafka.KeepControl()
		var n int
		_ = rb.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'watched-relay' AND state LIKE 'idle in transaction%'`).Scan(&n)
		checked.Add(1)
		inTx.Add(int32(n))
		return nil, nil, false
	})
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.Pool = pool; c.BatchSize = 10 })
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 50, 20*time.Second); len(recs) != 50 {
		t.Fatalf("read %d of 50", len(recs))
	}
	if checked.Load() == 0 {
		t.Fatal("no produce request was observed")
	}
	if inTx.Load() != 0 {
		t.Fatalf("relay connections were inside a transaction during %d produce requests", inTx.Load())
	}
}

// The in-process wake-up: with polling (and lease renewals) a minute apart,
// only Notify explains a prompt delivery.
func TestRelayWakesOnInProcessNotify(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	ctx := testkit.Ctx(t)
	// A first message, written before the relay starts: once it is out,
	// the relay's first poll is behind it.
	testkit.Must(t, rb.writer.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Key: "w", Type: orderPlacedType, Value: orderPlaced{OrderID: "w"}}), "write")
	relay, _ := rb.startRelay(t, func(c *outbox.RelayConfig) { c.PollInterval = time.Minute; c.LeaseTTL = 5 * time.Minute })
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: rb.codec, Notify: relay.Notify})
	testkit.Must(t, err, "writer")
	testkit.Eventually(t, 30*time.Second, "the first poll published the first message", func() bool { return pendingCount(t, rb) == 0 })
	testkit.Must(t, pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
		if err := w.Write(ctx, tx, outbox.Message{Topic: "orders", Key: "w", Type: orderPlacedType, Value: orderPlaced{OrderID: "w"}}); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond) // commit a little after the wake-up, as real transactions do
		return nil
	}), "write")
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 2, 20*time.Second); len(recs) != 2 {
		t.Fatal("the relay did not wake on Notify")
	}
}

// A writer that wakes the relay after its commit (DeferNotify with
// NotifyCommitted): one wake-up, no fast polling, and the message is out
// although polls are a minute apart.
func TestRelayWakesOnNotifyCommitted(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	ctx := testkit.Ctx(t)
	testkit.Must(t, rb.writer.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Key: "c", Type: orderPlacedType, Value: orderPlaced{OrderID: "c"}}), "write")
	relay, _ := rb.startRelay(t, func(c *outbox.RelayConfig) { c.PollInterval = time.Minute; c.LeaseTTL = 5 * time.Minute })
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: rb.codec, Notify: func() { t.Error("Notify called for a deferred write") }, NotifyCommitted: relay.NotifyCommitted})
	testkit.Must(t, err, "writer")
	testkit.Eventually(t, 30*time.Second, "the first poll published the first message", func() bool { return pendingCount(t, rb) == 0 })
	dctx, committed := w.DeferNotify(ctx)
	testkit.Must(t, pgx.BeginFunc(dctx, rb.pool, func(tx pgx.Tx) error {
		return w.Write(dctx, tx, outbox.Message{Topic: "orders", Key: "c", Type: orderPlacedType, Value: orderPlaced{OrderID: "c"}})
	}), "write")
	committed()
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 2, 20*time.Second); len(recs) != 2 {
		t.Fatal("the relay did not wake on NotifyCommitted")
	}
}

// PITFALLS 12: Sarama gives up on unreachable brokers within a second; the
// relay does not. Started while Kafka is down, it publishes once Kafka is up.
func TestRelayWaitsForKafkaToComeUp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	testkit.Must(t, err, "listen")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens here until kfake starts below
	rb := &relayBundle{bundle: b, registry: testkit.Registry(t), brokers: []string{fmt.Sprintf("127.0.0.1:%d", port)}}
	want := rb.writeSeq(t, "orders", 2, 20)
	var logs syncBuffer
	rb.startRelay(t, func(c *outbox.RelayConfig) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	testkit.Eventually(t, 30*time.Second, "the relay tried Kafka twice and goes on", func() bool {
		return strings.Count(logs.String(), "kafka unreachable, retrying") >= 2
	})
	rb.kafka = testkit.Kafka(t, 2, kfake.Ports(port))
	recs := testkit.ReadAll(t, rb.brokers, "orders", 20, 20*time.Second)
	if res := count(t, rb.codec, recs, want); res != (tally{}) || len(recs) != 20 {
		t.Fatalf("read %d: %+v", len(recs), res)
	}
}

// PITFALLS 13 and 27: schemas are registered once and their IDs cached, not
// looked up per message, also when several workers meet a new schema at
// once.
func TestRelayRegistersEachSchemaOnceNotPerMessage(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 2)
	var calls atomic.Int32
	rb.registry.Intercept(func(_ http.ResponseWriter, r *http.Request) bool {
		calls.Add(1)
		// A registry a few milliseconds away, as a real one is: the
		// workers meet the new schema while its registration is under
		// way (PITFALLS 27), and must wait for it, not register it again.
		time.Sleep(20 * time.Millisecond)
		return false
	})
	rb.writeSeq(t, "orders", 16, 300)
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.BatchSize = 50 }) // two workers (the default), batches at once
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 300, 20*time.Second); len(recs) != 300 {
		t.Fatalf("read %d of 300", len(recs))
	}
	// The subject's latest version, the registration, and srclient's
	// fetch of the schema it just registered: three, whatever the count of
	// messages and batches.
	if n := calls.Load(); n > 3 {
		t.Fatalf("%d registry requests for 300 messages of one schema in batches of two workers, want at most 3", n)
	}
}

// PITFALLS 14: test registries accept incompatible schemas, so the relay
// checks BACKWARD compatibility itself: a schema that removes a field
// without a default is not registered, its messages wait with the reason,
// and compatible evolutions go through.
func TestRelayRefusesASchemaThatBreaksBackwardCompatibility(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	ctx := testkit.Ctx(t)
	subject := outbox.Subject("orders", orderPlacedType)
	// v1 in the registry has a required field "customer" that the current
	// schema dropped... which is fine for BACKWARD (readers ignore it).
	_, _, err := rb.registry.RegisterSchema(subject, sr.Schema{Schema: `{"type":"record","name":"OrderPlaced","namespace":"test.orders",
		"fields":[{"name":"order_id","type":"string"},{"name":"seq","type":"long"},{"name":"customer","type":"string"}]}`})
	testkit.Must(t, err, "seed v1")
	// ... but a reader that needs a field v1 data lacks, with no default, is not.
	breaking := outbox.MustCodec(`{"type":"record","name":"OrderPlaced","namespace":"test.orders",
		"fields":[{"name":"order_id","type":"string"},{"name":"seq","type":"long"},{"name":"region","type":"string"}]}`)
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: breaking})
	testkit.Must(t, err, "writer")
	testkit.Must(t, w.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Key: "b", Type: orderPlacedType,
		Value: map[string]any{"order_id": "b", "seq": int64(1), "region": "eu"}}), "write")
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.MaxAttempts = 100 })
	testkit.Eventually(t, 10*time.Second, "incompatibility recorded", func() bool {
		var e string
		_ = rb.pool.QueryRow(ctx, `SELECT COALESCE(last_error, '') FROM sagabox.outbox WHERE key = 'b'`).Scan(&e)
		return strings.Contains(e, "backward compatible")
	})
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 1, 300*time.Millisecond); len(recs) != 0 {
		t.Fatal("a message with an incompatible schema was published")
	}
	// The compatible schema of the test codec (note has a default) goes out.
	testkit.Must(t, rb.writer.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Key: "c", Type: orderPlacedType, Value: orderPlaced{OrderID: "c"}}), "write")
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 1, 10*time.Second); len(recs) != 1 || recs[0].Key != "c" {
		t.Fatalf("compatible schema not published: %d records", len(recs))
	}
}

// PITFALLS 3, the part Kafka can prevent: a produce request the broker
// appended but answered with a timeout is retried with the same producer ID
// and sequence numbers, and the broker drops the copy. No duplicate.
func TestIdempotentProducerDropsRetriedDuplicates(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 2)
	want := rb.writeSeq(t, "orders", 4, 80)
	// REQUEST_TIMED_OUT on produce: kfake appends the records, then
	// answers with the error, as a broker whose replication timed out.
	timedOut := rb.kafka.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.RequestTimedOut, Count: 3})
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.Workers = 1; c.BatchSize = 20 })
	testkit.Eventually(t, 20*time.Second, "drained", func() bool { return pendingCount(t, rb) == 0 })
	recs := testkit.ReadAll(t, rb.brokers, "orders", 81, 2*time.Second)
	res := count(t, rb.codec, recs, want)
	if timedOut.Hits() != 3 {
		t.Fatalf("fault hit %d times, want 3", timedOut.Hits())
	}
	if res != (tally{}) || len(recs) != 80 {
		t.Fatalf("%d records after 3 appended-but-timed-out requests: %+v", len(recs), res)
	}
}
