package outboxtest_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/outbox/outboxtest"
	"github.com/sagabox/sagabox/saga"
)

const placedV1 = `{"type": "record", "name": "OrderPlaced", "namespace": "shop",
	"fields": [{"name": "order_id", "type": "string"}, {"name": "total_cents", "type": "long"}]}`

const placedV2 = `{"type": "record", "name": "OrderPlaced", "namespace": "shop",
	"fields": [{"name": "order_id", "type": "string"}, {"name": "total_cents", "type": "long"},
		{"name": "currency", "type": "string", "default": "EUR"}]}`

const stockSchema = `{"type": "record", "name": "StockReserved", "namespace": "shop",
	"fields": [{"name": "total_cents", "type": "long"}]}`

type placed struct {
	OrderID    string `avro:"order_id"`
	TotalCents int64  `avro:"total_cents"`
}

type bundle struct {
	pool   *pgxpool.Pool
	codec  *outbox.Codec
	writer *outbox.Writer
}

func setup(t *testing.T, schemas ...string) bundle {
	t.Helper()
	pool := testkit.DB(t)
	testkit.Must(t, outbox.Migrate(t.Context(), pool), "migrate")
	codec := outbox.MustCodec(append([]string{placedV1, stockSchema}, append(saga.Schemas(), schemas...)...)...)
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec})
	testkit.Must(t, err, "writer")
	return bundle{pool: pool, codec: codec, writer: w}
}

func (b bundle) write(t *testing.T, db outbox.Execer, msgs ...outbox.Message) {
	t.Helper()
	testkit.Must(t, b.writer.Write(t.Context(), db, msgs...), "write")
}

func order(id string, cents int64) outbox.Message {
	return outbox.Message{Topic: "orders", Key: id, Type: "shop.OrderPlaced", Value: placed{id, cents}}
}

// fakeT records what a kit function reports. Fatal stops the calling
// goroutine as testing.T's does, so run the call through fakeT.run.
type fakeT struct {
	testing.TB
	mu     sync.Mutex
	failed bool
	log    []string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = true
	f.log = append(f.log, fmt.Sprintf(format, args...))
}

func (f *fakeT) Fatalf(format string, args ...any) { f.Errorf(format, args...); runtime.Goexit() }
func (f *fakeT) Fatal(args ...any)                 { f.Fatalf("%s", fmt.Sprint(args...)) }
func (f *fakeT) FailNow()                          { f.Fatalf("FailNow") }

// run calls fn with a fresh fakeT and returns what it reported ("" when it
// did not fail).
func run(t *testing.T, fn func(tb testing.TB)) string {
	t.Helper()
	f := &fakeT{TB: t}
	done := make(chan struct{})
	go func() { defer close(done); fn(f) }()
	<-done
	if !f.failed {
		return ""
	}
	return strings.Join(f.log, "\n")
}

// What a transaction wrote is visible inside it, with every field, and gone
// with its rollback.
func TestExpectOneSeesTheTransactionsWritesBeforeRollback(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	tx, err := b.pool.Begin(ctx)
	testkit.Must(t, err, "begin")
	defer tx.Rollback(context.Background()) //nolint:errcheck
	m := order("o-1", 4200)
	m.CorrelationID, m.CausationID, m.SagaID, m.Headers = "corr-1", "cause-1", "saga-1", map[string]string{"tenant": "acme"}
	b.write(t, tx, m, order("o-2", 100))

	got := outboxtest.ExpectOne(t, tx, b.codec, outboxtest.Topic("orders"), outboxtest.Key("o-1"))
	if got.Type != "shop.OrderPlaced" || got.CorrelationID != "corr-1" || got.CausationID != "cause-1" ||
		got.SagaID != "saga-1" || got.Headers["tenant"] != "acme" || got.Parked || got.ID.String() == "" {
		t.Fatalf("message: %+v", got)
	}
	var v placed
	testkit.Must(t, got.Decode(&v), "decode")
	if v != (placed{"o-1", 4200}) {
		t.Fatalf("decoded %+v", v)
	}
	for _, f := range []outboxtest.Filter{outboxtest.CorrelationID("corr-1"), outboxtest.CausationID("cause-1"),
		outboxtest.SagaID("saga-1"), outboxtest.Header("tenant", "acme")} {
		if m := outboxtest.ExpectOne(t, tx, b.codec, f); m.Key != "o-1" {
			t.Fatalf("%s found %s", f, m)
		}
	}
	if ms := outboxtest.Messages(t, tx, b.codec, outboxtest.Type("shop.OrderPlaced")); len(ms) != 2 || ms[0].Key != "o-1" || ms[1].Key != "o-2" {
		t.Fatalf("messages, in write order: %v", ms)
	}
	if last := outboxtest.Last(t, tx, b.codec, outboxtest.Topic("orders")); last.Key != "o-2" {
		t.Fatalf("last: %s", last)
	}
	outboxtest.ExpectNone(t, b.pool, b.codec) // not committed: invisible outside
	testkit.Must(t, tx.Rollback(ctx), "rollback")
	outboxtest.ExpectNone(t, b.pool, b.codec, outboxtest.Topic("orders"))
}

// The assertions fail, and say what the outbox holds instead.
func TestAssertionsFailListingTheOutbox(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, b.pool, order("o-1", 4200), order("o-2", 100))
	orders := outboxtest.Topic("orders")

	for _, c := range []struct {
		name string
		fn   func(tb testing.TB)
		want []string
	}{
		{"ExpectOne of a missing message", func(tb testing.TB) {
			outboxtest.ExpectOne(tb, b.pool, b.codec, orders, outboxtest.Type("shop.OrderShipped"))
		}, []string{`want 1 message with topic="orders" type="shop.OrderShipped", found 0; the outbox holds 2:`,
			`orders key="o-1" type=shop.OrderPlaced`, `orders key="o-2" type=shop.OrderPlaced`}},
		{"ExpectOne of two", func(tb testing.TB) { outboxtest.ExpectOne(tb, b.pool, b.codec, orders) },
			[]string{`want 1 message with topic="orders", found 2`}},
		{"ExpectNone of a present message", func(tb testing.TB) {
			outboxtest.ExpectNone(tb, b.pool, b.codec, outboxtest.Key("o-2"))
		}, []string{`want no message with key="o-2", found 1`}},
		{"Last of a missing message", func(tb testing.TB) {
			outboxtest.Last(tb, b.pool, b.codec, outboxtest.Topic("payments"))
		}, []string{`want a message with topic="payments", found none; the outbox holds 2`}},
		{"a missing table", func(tb testing.TB) {
			outboxtest.Messages(tb, testkit.DB(t), b.codec)
		}, []string{`read the outbox`, `did you run outbox.Migrate?`}},
	} {
		got := run(t, c.fn)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: reported %q, want it to contain %q", c.name, got, w)
			}
		}
	}
	if got := run(t, func(tb testing.TB) { outboxtest.ExpectOne(tb, b.pool, b.codec, outboxtest.Key("o-1")) }); got != "" {
		t.Errorf("ExpectOne of a present message failed: %s", got)
	}
	empty := setup(t)
	if got := run(t, func(tb testing.TB) { outboxtest.ExpectOne(tb, empty.pool, empty.codec) }); !strings.Contains(got, "the outbox is empty") {
		t.Errorf("ExpectOne on an empty outbox: %q", got)
	}
}

// A saga reply's payload, inside the envelope older versions wrote, decodes
// in one call.
func TestDecodePayloadOfASagaReply(t *testing.T) {
	t.Parallel()
	b := setup(t)
	payload, err := avro.Marshal(b.codec.MustSchema("shop.StockReserved"), map[string]any{"total_cents": int64(170)})
	testkit.Must(t, err, "payload")
	reply := func(reason, typ string, p []byte) map[string]any {
		return map[string]any{"saga_id": "s-1", "step": 0, "attempt": 1, "compensation": false, "outcome": "SUCCESS",
			"reason": reason, "payload_type": typ, "payload": p}
	}
	b.write(t, b.pool,
		outbox.Message{Topic: "replies", Key: "s-1", Type: saga.ReplyType, SagaID: "s-1", Value: reply("with", "shop.StockReserved", payload)},
		outbox.Message{Topic: "replies", Key: "s-1", Type: saga.ReplyType, SagaID: "s-1", Value: reply("without", "", []byte{})})

	ms := outboxtest.Messages(t, b.pool, b.codec, outboxtest.Topic("replies"), outboxtest.SagaID("s-1"))
	if len(ms) != 2 {
		t.Fatalf("replies: %v", ms)
	}
	var env struct {
		Outcome string `avro:"outcome"`
		Reason  string `avro:"reason"`
	}
	var got struct {
		TotalCents int64 `avro:"total_cents"`
	}
	testkit.Must(t, ms[0].Decode(&env), "envelope")
	testkit.Must(t, ms[0].DecodePayload(&got), "payload")
	if env.Outcome != "SUCCESS" || env.Reason != "with" || got.TotalCents != 170 {
		t.Fatalf("reply %+v payload %+v", env, got)
	}
	if err := ms[1].DecodePayload(&got); err == nil || !strings.Contains(err.Error(), "carries no payload") {
		t.Fatalf("a reply without payload: %v", err)
	}
	b.write(t, b.pool, order("o-1", 1))
	if err := outboxtest.ExpectOne(t, b.pool, b.codec, outboxtest.Topic("orders")).DecodePayload(&got); err == nil ||
		!strings.Contains(err.Error(), "not an envelope") {
		t.Fatalf("an event that is no envelope: %v", err)
	}
}

// A saga reply in the header format is its payload record: DecodePayload
// decodes it, and says so for an Empty one.
func TestDecodePayloadOfASagaReplyInHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := map[string]string{saga.HeaderStep: "0", saga.HeaderAttempt: "1", saga.HeaderCompensation: "false", saga.HeaderOutcome: "SUCCESS"}
	b.write(t, b.pool,
		outbox.Message{Topic: "replies", Key: "s-1", Type: "shop.StockReserved", SagaID: "s-1", Headers: h,
			Value: map[string]any{"total_cents": int64(170)}},
		outbox.Message{Topic: "replies", Key: "s-1", Type: saga.EmptyType, SagaID: "s-1", Headers: h, Value: outbox.RawValue{}})
	ms := outboxtest.Messages(t, b.pool, b.codec, outboxtest.Topic("replies"), outboxtest.SagaID("s-1"))
	if len(ms) != 2 {
		t.Fatalf("replies: %v", ms)
	}
	var got struct {
		TotalCents int64 `avro:"total_cents"`
	}
	testkit.Must(t, ms[0].DecodePayload(&got), "payload")
	if got.TotalCents != 170 || ms[0].Headers[saga.HeaderOutcome] != "SUCCESS" {
		t.Fatalf("reply %v payload %+v", ms[0], got)
	}
	if err := ms[1].DecodePayload(&got); err == nil || !strings.Contains(err.Error(), "carries no payload") {
		t.Fatalf("a reply without payload: %v", err)
	}
}

// A value is decoded with the schema it was written with, even when the
// test's codec has another version of it.
func TestDecodeUsesTheWritersSchema(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.write(t, b.pool, order("o-1", 4200))
	v2 := outbox.MustCodec(placedV2)
	m := outboxtest.ExpectOne(t, b.pool, v2, outboxtest.Type("shop.OrderPlaced"))
	var v struct {
		OrderID  string `avro:"order_id"`
		Currency string `avro:"currency"`
	}
	testkit.Must(t, m.Decode(&v), "decode with v1, the writer's schema")
	if v.OrderID != "o-1" || v.Currency != "" {
		t.Fatalf("decoded %+v", v)
	}

	// A row whose schema nobody knows says so when decoded.
	testkit.Must(t, pgx.BeginFunc(t.Context(), b.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(t.Context(), `DELETE FROM sagabox.outbox_schemas`)
		return err
	}), "forget the schemas")
	m = outboxtest.ExpectOne(t, b.pool, v2, outboxtest.Type("shop.OrderPlaced"))
	if err := m.Decode(&v); err == nil || !strings.Contains(err.Error(), "no definition") {
		t.Fatalf("decode without a known schema: %v", err)
	}
}
