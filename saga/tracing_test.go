package saga_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// A timer has no record to read a trace context from: the saga stores the
// one it started under (migration 007), so the deadlines that expire and
// the retries that come due later produce spans in the saga's trace,
// children of the span that started it, and what they send stays there.
func TestTimersJoinTheTraceTheSagaStartedIn(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.seed("book", 10, "ann", 100)
	w.runParticipants("g")
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	o := w.orchestrator(silentDefinition(300*time.Millisecond), func(c *saga.Config, _ *testRuntime) { c.TracerProvider = tp })
	w.startOrchestrator(o)

	ctx, root := tp.Tracer("test").Start(w.ctx, "place order")
	var id string
	testkit.Must(t, pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, item) VALUES ('o1', 'book')`); err != nil {
			return err
		}
		sid, err := o.Start(ctx, tx, order{OrderID: "o1", Item: "book", Qty: 1, User: "ann", Amount: 1})
		id = sid.String()
		return err
	}), "start")
	root.End()
	if st := w.waitFinished([]string{id}, 30*time.Second)[id]; st != saga.StatusCompensated {
		t.Fatalf("status %s, want compensated", st)
	}
	kinds := map[string]int{}
	for _, sp := range rec.Ended() {
		if sp.Name() != "saga timer create_order" {
			continue
		}
		var kind, sagaID string
		for _, a := range sp.Attributes() {
			switch a.Key {
			case "sagabox.saga.timer":
				kind = a.Value.AsString()
			case "sagabox.saga.id":
				sagaID = a.Value.AsString()
			}
		}
		kinds[kind]++
		if sp.SpanContext().TraceID() != root.SpanContext().TraceID() || sp.Parent().SpanID() != root.SpanContext().SpanID() || sagaID != id {
			t.Errorf("timer span %s (saga %s) in trace %s under %s, want the saga's %s under %s", kind, sagaID,
				sp.SpanContext().TraceID(), sp.Parent().SpanID(), root.SpanContext().TraceID(), root.SpanContext().SpanID())
		}
		if sp.SpanKind() != oteltrace.SpanKindInternal {
			t.Errorf("timer span kind %s", sp.SpanKind())
		}
	}
	// fraud_check times out twice (two attempts): two deadlines, and the
	// retry between them.
	if kinds["deadline"] != 2 || kinds["retry"] != 1 {
		t.Fatalf("timer spans by kind %v, want 2 deadline and 1 retry", kinds)
	}
}
