package orderservice_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/testkit"
)

// tracedShop is the shop with every service tracing into one in-memory
// recorder, each under its own service name.
type tracedShop struct {
	*shop
	rec    *tracetest.SpanRecorder
	client trace.Tracer // the test's own "browser"
}

func startTracedShop(t *testing.T, ctx context.Context) *tracedShop {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	provider := func(service string) *sdktrace.TracerProvider {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec),
			sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(service))))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		return tp
	}
	s := startShopWith(t, ctx, shopOptions{tp: func(service string) trace.TracerProvider { return provider(service) }})
	return &tracedShop{shop: s, rec: rec, client: provider("test").Tracer("test")}
}

// placeTraced places an order under a span of the test's, sending its
// traceparent as a browser with tracing would, and returns the order's ID
// and the trace's ID.
func (s *tracedShop) placeTraced(t *testing.T, token string, items ...map[string]any) (string, trace.TraceID) {
	t.Helper()
	ctx, span := s.client.Start(context.Background(), "place order", trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	js, _ := json.Marshal(map[string]any{"items": items})
	req, err := http.NewRequestWithContext(ctx, "POST", s.orders+"/orders", strings.NewReader(string(js)))
	testkit.Must(t, err, "request")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	res, err := http.DefaultClient.Do(req)
	testkit.Must(t, err, "POST /orders")
	defer res.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(res.Body).Decode(&body)
	if res.StatusCode != 202 {
		t.Fatalf("place: %d %v", res.StatusCode, body)
	}
	return body["orderId"].(string), span.SpanContext().TraceID()
}

// spanTree renders the ended spans of one trace as an indented tree, one
// "service: name" per line, children sorted, so that two runs of the same
// flow render the same. It fails the test on a span whose parent is not in
// the trace (a broken link), or on more than one root.
func spanTree(spans []sdktrace.ReadOnlySpan, id trace.TraceID) (string, error) {
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	var roots []sdktrace.ReadOnlySpan
	for _, sp := range spans {
		if sp.SpanContext().TraceID() == id {
			byID[sp.SpanContext().SpanID()] = sp
		}
	}
	for _, sp := range byID {
		p := sp.Parent().SpanID()
		if !sp.Parent().IsValid() {
			roots = append(roots, sp)
			continue
		}
		if _, ok := byID[p]; !ok {
			return "", fmt.Errorf("span %q (%s) has parent %s, which is not in the trace", sp.Name(), service(sp), p)
		}
		children[p] = append(children[p], sp)
	}
	if len(roots) != 1 {
		return "", fmt.Errorf("trace %s has %d roots, want 1", id, len(roots))
	}
	var render func(sp sdktrace.ReadOnlySpan, depth int) []string
	render = func(sp sdktrace.ReadOnlySpan, depth int) []string {
		var subs [][]string
		for _, c := range children[sp.SpanContext().SpanID()] {
			subs = append(subs, render(c, depth+1))
		}
		slices.SortFunc(subs, func(a, b []string) int { return strings.Compare(strings.Join(a, "\n"), strings.Join(b, "\n")) })
		out := []string{strings.Repeat("  ", depth) + service(sp) + ": " + sp.Name() + label(sp)}
		for _, s := range subs {
			out = append(out, s...)
		}
		return out
	}
	return strings.Join(render(roots[0], 0), "\n"), nil
}

// label is what a saga span is about: the command a participant ran and
// its outcome, or the step a reply answered and its outcome; "undo" marks
// a compensation.
func label(sp sdktrace.ReadOnlySpan) string {
	undo := ""
	if attr(sp, "sagabox.saga.compensation") == "true" {
		undo = "undo "
	}
	switch {
	case attr(sp, "sagabox.saga.command") != "":
		return fmt.Sprintf(" [%s%s: %s]", undo, attr(sp, "sagabox.saga.command"), attr(sp, "sagabox.saga.outcome"))
	case attr(sp, "sagabox.saga.step_index") != "":
		return fmt.Sprintf(" [%sstep %s: %s]", undo, attr(sp, "sagabox.saga.step_index"), attr(sp, "sagabox.saga.outcome"))
	}
	return ""
}

func service(sp sdktrace.ReadOnlySpan) string {
	v, _ := sp.Resource().Set().Value(semconv.ServiceNameKey)
	return v.AsString()
}

// sagaSpans are the ended spans, of any trace, that name the saga.
func sagaSpans(spans []sdktrace.ReadOnlySpan, sagaID string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, sp := range spans {
		for _, a := range sp.Attributes() {
			if a.Key == "sagabox.saga.id" && a.Value.AsString() == sagaID {
				out = append(out, sp)
			}
		}
	}
	return out
}

func attr(sp sdktrace.ReadOnlySpan, k attribute.Key) string {
	for _, a := range sp.Attributes() {
		if a.Key == k {
			return a.Value.String()
		}
	}
	return ""
}

// waitTree waits until the trace renders as want (the last consumers end
// their spans after the saga finished), and fails with the tree it got.
func (s *tracedShop) waitTree(t *testing.T, id trace.TraceID, want string) bool {
	t.Helper()
	want = strings.TrimSpace(want)
	var got string
	var err error
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err = spanTree(s.rec.Ended(), id)
		if err == nil && got == want {
			return true
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling the recorder, not waiting for time
	}
	if err != nil {
		t.Errorf("trace %s: %v\ngot:\n%s", id, err, got)
		return false
	}
	t.Errorf("trace %s:\ngot:\n%s\n\nwant:\n%s", id, got, want)
	return false
}

// One trace per order across the three services: the HTTP request that
// places an order, the outbox write, every publish, command, reply and
// compensation of its saga, and the event consumers, each the child of
// the hop that caused it, all in the trace of the traceparent sent with
// POST /orders. An approved order and an order cancelled for lack of
// credit (a compensation) each render as the tree below; every span naming
// the saga is in that trace.
func TestOneTracePerOrderAcrossTheThreeServices(t *testing.T) {
	t.Parallel()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	s := startTracedShop(t, ctx)
	for _, p := range []map[string]any{
		{"sku": "TEA-1", "name": "Green tea", "price": 450, "stock": 10},
		{"sku": "LAMP-1", "name": "Lamp", "price": 6000, "stock": 5},
	} {
		if st, body := call(t, "POST", s.catalog+"/products", s.admin, p); st != 201 {
			t.Fatalf("add product: %d %v", st, body)
		}
	}
	_, annToken := s.customer(t, "ann@example.com")
	_, bobToken := s.customer(t, "bob@example.com")
	// The order service fetches the key set on its first token: not in
	// the traces below.
	if st, _ := call(t, "GET", s.orders+"/orders", annToken, nil); st != 200 {
		t.Fatalf("warm-up: %d", st)
	}

	for _, c := range []struct {
		name, token string
		items       []map[string]any
		status      string
		want        string
	}{
		{"approved", annToken, []map[string]any{line("TEA-1", 2)}, "APPROVED", approvedTree},
		{"cancelled", bobToken, []map[string]any{line("LAMP-1", 2)}, "CANCELLED", cancelledTree},
	} {
		id, traceID := s.placeTraced(t, c.token, c.items...)
		order := s.decided(t, c.token, id)
		if order["status"] != c.status {
			t.Fatalf("%s order: %v", c.name, order)
		}
		s.waitTree(t, traceID, c.want)
		sagaID := order["saga"].(map[string]any)["id"].(string)
		spans := sagaSpans(s.rec.Ended(), sagaID)
		if len(spans) == 0 {
			t.Fatalf("%s order: no span names saga %s", c.name, sagaID)
		}
		for _, sp := range spans {
			if sp.SpanContext().TraceID() != traceID {
				t.Errorf("%s order: span %q (%s) of saga %s is in trace %s, not the order's %s", c.name, sp.Name(), service(sp),
					sagaID, sp.SpanContext().TraceID(), traceID)
			}
			if sp.SpanKind() == trace.SpanKindConsumer && attr(sp, "messaging.system") != "kafka" {
				t.Errorf("%s order: consumer span %q has no messaging.system=kafka: %v", c.name, sp.Name(), sp.Attributes())
			}
		}
	}
	stop()
	s.stopped(t)
}

// The approved order: POST /orders checks the SKUs with the catalog, then
// writes the saga's first command (reserve_stock) and OrderCreated; the
// catalog's reply leads to debit_credit, whose reply approves the order
// (the local step approve_order writes OrderApproved, which the catalog's
// order view consumes).
const approvedTree = `
test: place order
  orderservice: POST /orders
    orderservice: HTTP GET
      catalogservice: GET /products/{sku}
    orderservice: outbox write
      orderservice: publish catalog.commands
        catalogservice: process catalog.commands [reserve_stock: succeeded]
          catalogservice: outbox write
            catalogservice: publish order.saga.replies
              orderservice: process order.saga.replies [step 1: succeeded]
                orderservice: outbox write
                  orderservice: publish user.commands
                    userservice: process user.commands [debit_credit: succeeded]
                      userservice: outbox write
                        userservice: publish order.saga.replies
                          orderservice: process order.saga.replies [step 2: succeeded]
                            orderservice: outbox write
                              orderservice: publish order.events
                                catalogservice: process order.events
    orderservice: outbox write
      orderservice: publish order.events
        catalogservice: process order.events
`

// The order cancelled for lack of credit: debit_credit is rejected, so
// the stock reservation is compensated (release_stock), and the local
// compensation of create_order writes OrderCancelled.
const cancelledTree = `
test: place order
  orderservice: POST /orders
    orderservice: HTTP GET
      catalogservice: GET /products/{sku}
    orderservice: outbox write
      orderservice: publish catalog.commands
        catalogservice: process catalog.commands [reserve_stock: succeeded]
          catalogservice: outbox write
            catalogservice: publish order.saga.replies
              orderservice: process order.saga.replies [step 1: succeeded]
                orderservice: outbox write
                  orderservice: publish user.commands
                    userservice: process user.commands [debit_credit: rejected]
                      userservice: outbox write
                        userservice: publish order.saga.replies
                          orderservice: process order.saga.replies [step 2: rejected]
                            orderservice: outbox write
                              orderservice: publish catalog.commands
                                catalogservice: process catalog.commands [undo release_stock: succeeded]
                                  catalogservice: outbox write
                                    catalogservice: publish order.saga.replies
                                      orderservice: process order.saga.replies [undo step 1: succeeded]
                                        orderservice: outbox write
                                          orderservice: publish order.events
                                            catalogservice: process order.events
    orderservice: outbox write
      orderservice: publish order.events
        catalogservice: process order.events
`
