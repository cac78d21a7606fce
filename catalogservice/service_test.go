package catalogservice_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/catalogservice"
	"github.com/sagabox/sagabox/catalogservice/app"
	"github.com/sagabox/sagabox/catalogservice/domain"
	"github.com/sagabox/sagabox/catalogservice/ports"
	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/httpx"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/schemas"
)

type bundle struct {
	svc    *catalogservice.Service
	h      http.Handler
	db     *testkit.Database
	issuer *auth.Issuer
	key    ed25519.PrivateKey
	admin  string // token
	user   string // token
	userID string
}

func setup(t *testing.T) bundle {
	t.Helper()
	db := testkit.NewDatabase(t)
	// A stand-in for userservice: same issuer code, keys read directly.
	key := auth.GenerateKey()
	issuer, err := auth.NewIssuer(auth.IssuerConfig{Key: key, Issuer: catalogservice.DefaultIssuer,
		Audience: catalogservice.DefaultAudience})
	testkit.Must(t, err, "issuer")
	verifier, err := auth.NewVerifier(auth.VerifierConfig{
		Keys:   func(context.Context) ([]byte, error) { return issuer.JWKS(), nil },
		Issuer: catalogservice.DefaultIssuer, Audience: catalogservice.DefaultAudience})
	testkit.Must(t, err, "verifier")
	svc, err := catalogservice.New(testkit.Ctx(t), catalogservice.Config{Pool: db.Pool, Verifier: verifier})
	testkit.Must(t, err, "new catalogservice")
	t.Cleanup(svc.Close)
	b := bundle{svc: svc, h: svc.Handler(), db: db, issuer: issuer, key: key, userID: uuid.NewString()}
	b.admin, _, _ = issuer.Issue(uuid.NewString(), auth.RoleAdmin)
	b.user, _, _ = issuer.Issue(b.userID, auth.RoleUser)
	return b
}

func (b bundle) addProduct(t *testing.T, sku, name string, price, stock int) {
	t.Helper()
	res := testkit.Call(t, b.h, "POST", "/products", map[string]any{"sku": sku, "name": name, "price": price, "stock": stock},
		testkit.Bearer(b.admin)...)
	if res.Status != 201 {
		t.Fatalf("add %s: %d %s", sku, res.Status, res.Raw)
	}
}

func (b bundle) count(t *testing.T, table string) int {
	t.Helper()
	var n int
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&n), "count")
	return n
}

func (b bundle) stock(t *testing.T, sku string) int {
	t.Helper()
	var n int
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `SELECT stock FROM products WHERE sku = $1`, sku).Scan(&n), "stock")
	return n
}

func TestProductsAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res := testkit.Call(t, b.h, "POST", "/products", `{"sku":"tea-1","name":"Green tea","price":450,"stock":12}`, testkit.Bearer(b.admin)...)
	if res.Status != 201 || res.Body["sku"] != "TEA-1" || res.Body["price"] != float64(450) || res.Body["stock"] != float64(12) {
		t.Fatalf("add: %d %s", res.Status, res.Raw)
	}
	testkit.CheckCamelCase(t, res.Raw)
	if res := testkit.Call(t, b.h, "GET", "/products/tea-1", nil); res.Status != 200 || res.Body["name"] != "Green tea" || res.Body["createdAt"] == nil {
		t.Fatalf("get: %d %s", res.Status, res.Raw)
	}
	if res := testkit.Call(t, b.h, "GET", "/products/NOPE", nil); res.Status != 404 || res.Code() != "product_not_found" {
		t.Fatalf("get unknown: %d %s", res.Status, res.Raw)
	}
	b.addProduct(t, "COFFEE-1", "Coffee", 300, 1)
	b.addProduct(t, "MUG-1", "Mug", 900, 3)
	page1 := testkit.Call(t, b.h, "GET", "/products?limit=2", nil)
	if page1.Status != 200 || len(page1.Body["products"].([]any)) != 2 || page1.Body["nextAfter"] != "MUG-1" {
		t.Fatalf("page 1: %s", page1.Raw)
	}
	testkit.CheckCamelCase(t, page1.Raw)
	page2 := testkit.Call(t, b.h, "GET", "/products?limit=2&after=MUG-1", nil)
	if ps := page2.Body["products"].([]any); len(ps) != 1 || ps[0].(map[string]any)["sku"] != "TEA-1" {
		t.Fatalf("page 2: %s", page2.Raw)
	}
	for _, q := range []string{"limit=0", "limit=101", "limit=x"} {
		if res := testkit.Call(t, b.h, "GET", "/products?"+q, nil); res.Status != 400 || res.Code() != "invalid_limit" {
			t.Errorf("%s: %d %s", q, res.Status, res.Raw)
		}
	}
}

// Every bad POST /products gets a clear 4xx and writes nothing.
func TestBadProductRequestsWriteNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addProduct(t, "TEA-1", "Tea", 450, 1)
	expired := sign(t, b, -time.Hour)
	long := strings.Repeat("n", 201)
	cases := []struct {
		name, body string
		headers    []string
		status     int
		code       string
	}{
		{"no token", `{"sku":"A","name":"A","price":1,"stock":1}`, nil, 401, "missing_token"},
		{"invalid token", `{"sku":"A","name":"A","price":1,"stock":1}`, testkit.Bearer("x.y.z"), 401, "invalid_token"},
		{"expired token", `{"sku":"A","name":"A","price":1,"stock":1}`, testkit.Bearer(expired), 401, "token_expired"},
		{"not an admin", `{"sku":"A","name":"A","price":1,"stock":1}`, testkit.Bearer(b.user), 403, "forbidden"},
		{"duplicate sku", `{"sku":"tea-1","name":"A","price":1,"stock":1}`, testkit.Bearer(b.admin), 409, "sku_taken"},
		{"malformed", `{"sku":"A",`, testkit.Bearer(b.admin), 400, "malformed_json"},
		{"unknown field", `{"sku":"A","name":"A","price":1,"stock":1,"discount":5}`, testkit.Bearer(b.admin), 400, "unknown_field"},
		{"oversized", `{"sku":"A","name":"` + strings.Repeat("A", httpx.MaxBodyBytes) + `","price":1,"stock":1}`, testkit.Bearer(b.admin), 413, "body_too_large"},
		{"trailing data", `{"sku":"A","name":"A","price":1,"stock":1}]`, testkit.Bearer(b.admin), 400, "malformed_json"},
		{"missing price", `{"sku":"A","name":"A","stock":1}`, testkit.Bearer(b.admin), 400, "validation_failed"},
		{"missing stock", `{"sku":"A","name":"A","price":1}`, testkit.Bearer(b.admin), 400, "validation_failed"},
		{"fractional price", `{"sku":"A","name":"A","price":4.5,"stock":1}`, testkit.Bearer(b.admin), 400, "invalid_field"},
		{"price as string", `{"sku":"A","name":"A","price":"450","stock":1}`, testkit.Bearer(b.admin), 400, "invalid_field"},
		{"zero price", `{"sku":"A","name":"A","price":0,"stock":1}`, testkit.Bearer(b.admin), 400, "validation_failed"},
		{"huge price", `{"sku":"A","name":"A","price":100000001,"stock":1}`, testkit.Bearer(b.admin), 400, "validation_failed"},
		{"negative stock", `{"sku":"A","name":"A","price":1,"stock":-1}`, testkit.Bearer(b.admin), 400, "validation_failed"},
		{"missing sku", `{"name":"A","price":1,"stock":1}`, testkit.Bearer(b.admin), 400, "validation_failed"},
		{"bad sku", `{"sku":"a b","name":"A","price":1,"stock":1}`, testkit.Bearer(b.admin), 400, "validation_failed"},
		{"missing name", `{"sku":"A","price":1,"stock":1}`, testkit.Bearer(b.admin), 400, "validation_failed"},
		{"long name", `{"sku":"A","name":"` + long + `","price":1,"stock":1}`, testkit.Bearer(b.admin), 400, "validation_failed"},
	}
	for _, c := range cases {
		res := testkit.Call(t, b.h, "POST", "/products", c.body, c.headers...)
		if res.Status != c.status || res.Code() != c.code || res.Body["error"] == "" {
			t.Errorf("%s: %d %s, want %d %s", c.name, res.Status, res.Raw, c.status, c.code)
		}
	}
	if n := b.count(t, "products"); n != 1 {
		t.Fatalf("bad requests wrote products: %d, want 1", n)
	}
}

func sign(t *testing.T, b bundle, ttl time.Duration) string {
	t.Helper()
	// An expired token signed by the real issuer's key: issue with a clock
	// in the past.
	past, err := auth.NewIssuer(auth.IssuerConfig{Key: b.key, Issuer: catalogservice.DefaultIssuer,
		Audience: catalogservice.DefaultAudience, TTL: time.Minute, Now: func() time.Time { return time.Now().Add(ttl) }})
	testkit.Must(t, err, "issuer")
	tok, _, err := past.Issue(b.userID, auth.RoleAdmin)
	testkit.Must(t, err, "issue")
	return tok
}

func TestServesHealthMetricsAndOpenAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
		if res := testkit.Call(t, b.h, "GET", path, nil); res.Status != 200 {
			t.Errorf("%s: %d %s", path, res.Status, res.Raw)
		}
	}
	testkit.CheckOpenAPI(t, b.h, ports.OpenAPI, "POST /products", "GET /products", "GET /products/{sku}",
		"GET /catalog/orders/{orderId}", "GET /healthz", "GET /readyz", "GET /metrics", "GET /openapi.json")
	testkit.CheckOpenAPICamelCase(t, ports.OpenAPI)
}

// reserve runs ReserveStock in its own committed transaction.
func (b bundle) reserve(t *testing.T, order string, lines ...domain.Line) domain.Outcome {
	t.Helper()
	var out domain.Outcome
	testkit.Must(t, pgx.BeginFunc(context.Background(), b.db.Pool, func(tx pgx.Tx) error {
		var err error
		out, err = b.svc.App().ReserveStock(context.Background(), tx, order, lines)
		return err
	}), "reserve")
	return out
}

func (b bundle) release(t *testing.T, order string) domain.Outcome {
	t.Helper()
	var out domain.Outcome
	testkit.Must(t, pgx.BeginFunc(context.Background(), b.db.Pool, func(tx pgx.Tx) error {
		var err error
		out, err = b.svc.App().ReleaseStock(context.Background(), tx, order)
		return err
	}), "release")
	return out
}

func TestReservationIsAllOrNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addProduct(t, "A", "Apple", 50, 10)
	b.addProduct(t, "B", "Banana", 20, 1)

	out := b.reserve(t, "o-short", domain.Line{SKU: "A", Quantity: 3}, domain.Line{SKU: "B", Quantity: 2})
	if out.OK || out.Reason != "insufficient stock for B" || b.stock(t, "A") != 10 || b.stock(t, "B") != 1 {
		t.Fatalf("short order: %+v, stock A %d B %d", out, b.stock(t, "A"), b.stock(t, "B"))
	}
	out = b.reserve(t, "o-unknown", domain.Line{SKU: "A", Quantity: 1}, domain.Line{SKU: "NOPE", Quantity: 1})
	if out.OK || out.Reason != "unknown SKU NOPE" || b.stock(t, "A") != 10 {
		t.Fatalf("unknown sku: %+v", out)
	}
	for name, lines := range map[string][]domain.Line{
		"zero quantity":     {{SKU: "A", Quantity: 0}},
		"negative quantity": {{SKU: "A", Quantity: -3}},
		"huge quantity":     {{SKU: "A", Quantity: domain.MaxQuantity + 1}},
		"no lines":          nil,
	} {
		if out := b.reserve(t, "o-"+name, lines...); out.OK || b.stock(t, "A") != 10 {
			t.Errorf("%s: %+v, stock %d", name, out, b.stock(t, "A"))
		}
	}
	out = b.reserve(t, "o-ok", domain.Line{SKU: "a", Quantity: 2}, domain.Line{SKU: "B", Quantity: 1}, domain.Line{SKU: "A", Quantity: 1})
	if !out.OK || out.TotalCents != 3*50+20 || b.stock(t, "A") != 7 || b.stock(t, "B") != 0 {
		t.Fatalf("ok order: %+v, stock A %d B %d", out, b.stock(t, "A"), b.stock(t, "B"))
	}
}

// PITFALLS.md 19 against the real database.
func TestReservationIsIdempotentPerOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addProduct(t, "A", "Apple", 50, 10)

	if out := b.reserve(t, "o1", domain.Line{SKU: "A", Quantity: 4}); !out.OK || b.stock(t, "A") != 6 {
		t.Fatalf("reserve: %+v", out)
	}
	if out := b.reserve(t, "o1", domain.Line{SKU: "A", Quantity: 4}); !out.OK || out.Changed || b.stock(t, "A") != 6 {
		t.Fatalf("duplicate reserve: %+v, stock %d", out, b.stock(t, "A"))
	}
	if out := b.release(t, "o1"); !out.OK || !out.Changed || b.stock(t, "A") != 10 {
		t.Fatalf("release: %+v, stock %d", out, b.stock(t, "A"))
	}
	if out := b.release(t, "o1"); out.Changed || b.stock(t, "A") != 10 {
		t.Fatalf("duplicate release: %+v, stock %d", out, b.stock(t, "A"))
	}
	if out := b.reserve(t, "o1", domain.Line{SKU: "A", Quantity: 4}); out.OK || b.stock(t, "A") != 10 {
		t.Fatalf("reserve after release: %+v, stock %d", out, b.stock(t, "A"))
	}
	if out := b.release(t, "o2"); !out.OK || b.stock(t, "A") != 10 {
		t.Fatalf("release without reservation: %+v, stock %d", out, b.stock(t, "A"))
	}
	if out := b.reserve(t, "o2", domain.Line{SKU: "A", Quantity: 1}); out.OK || b.stock(t, "A") != 10 {
		t.Fatalf("reserve arriving after its release: %+v, stock %d", out, b.stock(t, "A"))
	}
	// A refused reservation is remembered: restocking does not turn a
	// redelivered refused command into stock taken for a cancelled order.
	if out := b.reserve(t, "o3", domain.Line{SKU: "A", Quantity: 11}); out.OK {
		t.Fatalf("oversized reservation: %+v", out)
	}
	_, err := b.db.Pool.Exec(context.Background(), `UPDATE products SET stock = 100 WHERE sku = 'A'`)
	testkit.Must(t, err, "restock")
	if out := b.reserve(t, "o3", domain.Line{SKU: "A", Quantity: 11}); out.OK || b.stock(t, "A") != 100 {
		t.Fatalf("duplicate of a refused reservation: %+v", out)
	}
}

// PITFALLS.md 22: 200 concurrent orders for a product with 5 in stock give
// exactly 5 reservations.
func TestNoOversellUnderConcurrency(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addProduct(t, "HOT", "Limited edition", 1000, 5)
	b.addProduct(t, "COLD", "Plenty", 10, 100000)
	results := make(chan domain.Outcome, 200)
	errs := make(chan error, 200)
	start := make(chan struct{})
	for i := range 200 {
		go func() {
			<-start
			var out domain.Outcome
			err := pgx.BeginFunc(context.Background(), b.db.Pool, func(tx pgx.Tx) error {
				var err error
				// COLD first in the request, HOT first in lock order: lines
				// are sorted, so orders never deadlock on each other.
				out, err = b.svc.App().ReserveStock(context.Background(), tx, uuid.NewString(),
					[]domain.Line{{SKU: "COLD", Quantity: 1 + i%3}, {SKU: "HOT", Quantity: 1}})
				return err
			})
			if err != nil {
				errs <- err
				return
			}
			results <- out
		}()
	}
	close(start)
	ok, refused := 0, 0
	for range 200 {
		select {
		case err := <-errs:
			t.Errorf("reserve failed: %v", err)
		case out := <-results:
			if out.OK {
				ok++
			} else {
				refused++
			}
		}
	}
	if ok != 5 || refused != 195 || b.stock(t, "HOT") != 0 {
		t.Fatalf("approved %d, refused %d, HOT stock %d; want 5, 195, 0", ok, refused, b.stock(t, "HOT"))
	}
	var reservedCold int
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `
SELECT coalesce(sum((l->>'quantity')::int), 0) FROM stock_reservations, jsonb_array_elements(lines) l
WHERE status = 'RESERVED' AND l->>'sku' = 'COLD'`).Scan(&reservedCold), "sum")
	if b.stock(t, "COLD") != 100000-reservedCold {
		t.Fatalf("COLD stock %d, but reservations hold %d: refused orders leaked stock", b.stock(t, "COLD"), reservedCold)
	}
}

func (b bundle) apply(t *testing.T, event any) {
	t.Helper()
	testkit.Must(t, pgx.BeginFunc(context.Background(), b.db.Pool, func(tx pgx.Tx) error {
		return b.svc.App().ApplyOrderEvent(context.Background(), tx, event)
	}), "apply %T", event)
}

func TestOrderReadModel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addProduct(t, "A", "Apple", 50, 10)
	order := uuid.NewString()
	at := time.Now().UTC().Truncate(time.Millisecond)
	created := schemas.OrderCreated{OrderID: order, UserID: b.userID, OccurredAt: at,
		Items: []schemas.OrderLine{{Sku: "A", Quantity: 2, UnitPriceCents: 50}, {Sku: "GONE", Quantity: 1}}, TotalCents: 100}
	approved := &schemas.OrderApproved{OrderID: order, UserID: b.userID, TotalCents: 100, OccurredAt: at.Add(time.Second)}
	cancelled := &schemas.OrderCancelled{OrderID: order, UserID: b.userID, Reason: "late", OccurredAt: at.Add(2 * time.Second)}

	// Out of order and duplicated, as Kafka may deliver them.
	b.apply(t, approved)
	b.apply(t, created)
	b.apply(t, &created)
	b.apply(t, cancelled)
	b.apply(t, approved)

	res := testkit.Call(t, b.h, "GET", "/catalog/orders/"+order, nil, testkit.Bearer(b.user)...)
	if res.Status != 200 || res.Body["status"] != "APPROVED" || res.Body["totalCents"] != float64(100) ||
		res.Body["orderId"] != order || res.Body["userId"] != b.userID || res.Body["updatedAt"] == nil {
		t.Fatalf("view: %d %s", res.Status, res.Raw)
	}
	testkit.CheckCamelCase(t, res.Raw)
	items := res.Body["items"].([]any)
	first := items[0].(map[string]any)
	if len(items) != 2 || first["name"] != "Apple" || first["quantity"] != float64(2) || first["unitPriceCents"] != float64(50) {
		t.Fatalf("items: %s", res.Raw)
	}
	if n := b.count(t, "order_views"); n != 1 {
		t.Fatalf("%d views", n)
	}

	other, _, _ := b.issuer.Issue(uuid.NewString(), auth.RoleUser)
	for name, c := range map[string]struct {
		path    string
		headers []string
		status  int
	}{
		"another user":  {"/catalog/orders/" + order, testkit.Bearer(other), 404},
		"admin":         {"/catalog/orders/" + order, testkit.Bearer(b.admin), 200},
		"no token":      {"/catalog/orders/" + order, nil, 401},
		"unknown order": {"/catalog/orders/" + uuid.NewString(), testkit.Bearer(b.admin), 404},
	} {
		if res := testkit.Call(t, b.h, "GET", c.path, nil, c.headers...); res.Status != c.status {
			t.Errorf("%s: %d %s", name, res.Status, res.Raw)
		}
	}

	err := pgx.BeginFunc(context.Background(), b.db.Pool, func(tx pgx.Tx) error {
		return b.svc.App().ApplyOrderEvent(context.Background(), tx, &schemas.ReserveStock{OrderID: order})
	})
	if !errors.Is(err, app.ErrUnknownEvent) {
		t.Fatalf("a command applied as an order event: %v", err)
	}
}

// Issue 11.5: a NUL byte or invalid UTF-8 in a path, a query or a JSON
// string is a 400 naming the field, never a 500 from Postgres (SQLSTATE
// 22021).
func TestInvalidTextIsA400NamingTheField(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, c := range []struct{ name, method, path, body, field string }{
		{"NUL in a SKU path", "GET", "/products/TEA%00", "", "path"},
		{"invalid UTF-8 in a SKU path", "GET", "/products/TEA%ff", "", "path"},
		{"NUL in the cursor", "GET", "/products?after=A%00", "", "after"},
		{"invalid UTF-8 in the cursor", "GET", "/products?after=%c3%28", "", "after"},
		{"NUL in an order view path", "GET", "/catalog/orders/x%00", "", "path"},
		{"NUL in a product name", "POST", "/products", `{"sku":"NUL-1","name":"Tea\u0000","price":100,"stock":1}`, "name"},
		{"invalid UTF-8 in a SKU", "POST", "/products", "{\"sku\":\"A\xff\",\"name\":\"Tea\",\"price\":100,\"stock\":1}", "sku"},
	} {
		var body any
		if c.body != "" {
			body = c.body
		}
		res := testkit.Call(t, b.h, c.method, c.path, body, testkit.Bearer(b.admin)...)
		if res.Status != 400 || res.Code() != "invalid_text" || res.Body["field"] != c.field {
			t.Errorf("%s: %d %s, want 400 invalid_text naming %s", c.name, res.Status, res.Raw, c.field)
		}
	}
	if n := b.count(t, "products"); n != 0 {
		t.Fatalf("invalid text wrote %d products", n)
	}
}

// Read-your-writes: a reader asking for at least version 2 of an order's
// view waits for the consumer's commit (an in-process signal, no polling)
// and then gets version 2, never the older state; asking for a version the
// view does not reach in time is a 409 view_behind.
func TestOrderViewWaitsForTheVersionTheClientSaw(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addProduct(t, "W", "Wait", 50, 10)
	order := uuid.NewString()
	at := time.Now().UTC().Truncate(time.Millisecond)
	b.apply(t, schemas.OrderCreated{OrderID: order, UserID: b.userID, OccurredAt: at,
		Items: []schemas.OrderLine{{Sku: "W", Quantity: 1, UnitPriceCents: 50}}, TotalCents: 50})
	b.svc.App().OrderViewCommitted(order)
	if res := testkit.Call(t, b.h, "GET", "/catalog/orders/"+order+"?min_version=1", nil, testkit.Bearer(b.user)...); res.Status != 200 || res.Body["version"] != float64(1) {
		t.Fatalf("version 1: %d %s", res.Status, res.Raw)
	}
	got := make(chan testkit.Response, 1)
	go func() {
		got <- testkit.Call(t, b.h, "GET", "/catalog/orders/"+order+"?min_version=2&wait=30", nil, testkit.Bearer(b.user)...)
	}()
	testkit.Eventually(t, 30*time.Second, "the reader to wait", func() bool { return b.svc.App().OrderViewWaiters(order) == 1 })
	// Apply the approval as the consumer does, then signal the commit.
	b.apply(t, &schemas.OrderApproved{OrderID: order, UserID: b.userID, TotalCents: 50, OccurredAt: at.Add(time.Second)})
	b.svc.App().OrderViewCommitted(order)
	select {
	case res := <-got:
		if res.Status != 200 || res.Body["status"] != "APPROVED" || res.Body["version"] != float64(2) {
			t.Fatalf("waited view: %d %s", res.Status, res.Raw)
		}
	case <-time.After(25 * time.Second): // the wait is 30 s: only the signal answers sooner
		t.Fatal("the waiting reader was not woken by the commit")
	}
	res := testkit.Call(t, b.h, "GET", "/catalog/orders/"+order+"?min_version=3&wait=0", nil, testkit.Bearer(b.user)...)
	if res.Status != 409 || res.Code() != "view_behind" || res.Body["version"] != float64(2) || res.Header.Get("Retry-After") == "" {
		t.Fatalf("ahead of the view: %d %s", res.Status, res.Raw)
	}
}
