package outbox_test

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/internal/tracing"
	"github.com/sagabox/sagabox/outbox"
)

// Messages of three traces written in one call (as a saga batch writes
// the replies of several commands) each stay in their own trace: the
// outbox write span is a child of the message's own span context
// (Message.SpanContext) or of ctx's span, the relay's publish span a child
// of that write, and the Kafka record's traceparent names the publish span.
func TestEachMessageOfABatchKeepsItsOwnTrace(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	ctx := testkit.Ctx(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: rb.codec, TracerProvider: tp})
	testkit.Must(t, err, "writer")

	tr := tp.Tracer("test")
	_, a := tr.Start(ctx, "a")
	_, b := tr.Start(ctx, "b")
	cctx, c := tr.Start(ctx, "c")
	msg := func(key string, sc trace.SpanContext) outbox.Message {
		return outbox.Message{Topic: "orders", Key: key, Type: orderPlacedType, Value: orderPlaced{OrderID: key}, SpanContext: sc}
	}
	testkit.Must(t, w.Write(cctx, rb.pool, msg("a", a.SpanContext()), msg("b", b.SpanContext()), msg("c", trace.SpanContext{})), "write")
	a.End()
	b.End()
	c.End()
	rb.startRelay(t, func(c *outbox.RelayConfig) { c.TracerProvider = tp })
	recs := testkit.ReadAll(t, rb.brokers, "orders", 3, 10*time.Second)
	if len(recs) != 3 {
		t.Fatalf("read %d of 3", len(recs))
	}
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	testkit.Eventually(t, 10*time.Second, "the publish spans to end", func() bool {
		n := 0
		for _, s := range rec.Ended() {
			byID[s.SpanContext().SpanID()] = s
			if s.SpanKind() == trace.SpanKindProducer && s.Name() == "publish orders" {
				n++
			}
		}
		return n == 3
	})
	origin := map[string]trace.Span{"a": a, "b": b, "c": c}
	for _, r := range recs {
		sc := tracing.Parse(r.Headers[outbox.HeaderTraceparent], r.Headers[outbox.HeaderTracestate])
		want := origin[string(r.Key)].SpanContext()
		if sc.TraceID() != want.TraceID() {
			t.Errorf("record %s: trace %s, want its message's %s", r.Key, sc.TraceID(), want.TraceID())
			continue
		}
		publish := byID[sc.SpanID()]
		if publish == nil || publish.Name() != "publish orders" {
			t.Errorf("record %s: its traceparent names span %v, not the publish span", r.Key, publish)
			continue
		}
		write := byID[publish.Parent().SpanID()]
		if write == nil || write.Name() != "outbox write" || write.Parent().SpanID() != want.SpanID() {
			t.Errorf("record %s: publish span's parent %v is not an outbox write under span %s", r.Key, write, want.SpanID())
		}
	}
}
