package orderservice_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/httpx"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/orderservice"
	"github.com/sagabox/sagabox/orderservice/app"
	"github.com/sagabox/sagabox/orderservice/domain"
	"github.com/sagabox/sagabox/orderservice/ports"
	"github.com/sagabox/sagabox/outbox/outboxtest"
)

// catalogStub stands in for catalogservice's HTTP API in the HTTP tests
// (the end-to-end test uses the real one): it sells the SKUs of its map.
type catalogStub struct {
	prices map[string]int64
	down   bool
}

func (c *catalogStub) Prices(_ context.Context, skus []string) (map[string]int64, error) {
	if c.down {
		return nil, fmt.Errorf("%w: connection refused", app.ErrCatalogUnavailable)
	}
	out := map[string]int64{}
	var unknown []string
	for _, s := range skus {
		p, ok := c.prices[s]
		if !ok {
			unknown = append(unknown, s)
		}
		out[s] = p
	}
	if unknown != nil {
		return nil, &domain.UnknownSKUError{SKUs: unknown}
	}
	return out, nil
}

type bundle struct {
	svc     *orderservice.Service
	h       http.Handler
	db      *testkit.Database
	catalog *catalogStub
	key     ed25519.PrivateKey
	issuer  *auth.Issuer
	user    string // token
	userID  string
	other   string // token of another user
	admin   string // token
}

// setup runs orderservice without Kafka: orders, events and the saga's
// commands are written, and wait in the outbox.
func setup(t *testing.T) bundle {
	t.Helper()
	db := testkit.NewDatabase(t)
	key := auth.GenerateKey()
	issuer, err := auth.NewIssuer(auth.IssuerConfig{Key: key, Issuer: orderservice.DefaultIssuer, Audience: orderservice.DefaultAudience})
	testkit.Must(t, err, "issuer")
	verifier, err := auth.NewVerifier(auth.VerifierConfig{
		Keys:   func(context.Context) ([]byte, error) { return issuer.JWKS(), nil },
		Issuer: orderservice.DefaultIssuer, Audience: orderservice.DefaultAudience})
	testkit.Must(t, err, "verifier")
	catalog := &catalogStub{prices: map[string]int64{"TEA-1": 450, "MUG-1": 900}}
	svc, err := orderservice.New(testkit.Ctx(t), orderservice.Config{Pool: db.Pool, Verifier: verifier, Catalog: catalog})
	testkit.Must(t, err, "new orderservice")
	t.Cleanup(svc.Close)
	b := bundle{svc: svc, h: svc.Handler(), db: db, catalog: catalog, key: key, issuer: issuer, userID: uuid.NewString()}
	b.user, _, _ = issuer.Issue(b.userID, auth.RoleUser)
	b.other, _, _ = issuer.Issue(uuid.NewString(), auth.RoleUser)
	b.admin, _, _ = issuer.Issue(uuid.NewString(), auth.RoleAdmin)
	return b
}

func (b bundle) count(t *testing.T, table string) int {
	t.Helper()
	var n int
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&n), "count %s", table)
	return n
}

// written counts what placing orders writes: orders, sagas, outbox rows.
func (b bundle) written(t *testing.T) string {
	return fmt.Sprintf("orders %d, sagas %d, outbox %d", b.count(t, "orders"), b.count(t, "sagabox.sagas"), b.count(t, "sagabox.outbox"))
}

func (b bundle) place(t *testing.T, token, body string, headers ...string) testkit.Response {
	t.Helper()
	return testkit.Call(t, b.h, "POST", "/orders", body, append(testkit.Bearer(token), headers...)...)
}

func TestPlaceOrderWritesOrderEventSagaAndFirstCommandTogether(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res := b.place(t, b.user, `{"items":[{"sku":"tea-1","quantity":2},{"sku":"MUG-1","quantity":1},{"sku":"TEA-1","quantity":1}]}`)
	id, _ := res.Body["orderId"].(string)
	if res.Status != 202 || res.Body["status"] != "PENDING" || id == "" || res.Header.Get("Location") != "/orders/"+id {
		t.Fatalf("place: %d %v %s", res.Status, res.Header, res.Raw)
	}

	// One transaction wrote the order, its event and the saga with its
	// first command.
	if got := b.written(t); got != "orders 1, sagas 1, outbox 2" {
		t.Fatalf("written: %s", got)
	}
	var got []string
	for _, m := range outboxtest.Messages(t, b.db.Pool, b.svc.Client().Codec()) {
		got = append(got, fmt.Sprintf("%s %s %s corr=%v", m.Topic, m.Type, map[bool]string{true: "key=order"}[m.Key == id], m.CorrelationID == id))
	}
	want := []string{
		"order.events sagabox.shop.OrderCreated key=order corr=true",
		// A saga's commands are keyed by the saga, which has the order's ID.
		"catalog.commands sagabox.shop.ReserveStock key=order corr=true",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("outbox:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	res = testkit.Call(t, b.h, "GET", "/orders/"+id, nil, testkit.Bearer(b.user)...)
	if res.Status != 200 || res.Body["status"] != "PENDING" || res.Body["totalCents"] != float64(3*450+900) {
		t.Fatalf("get: %d %s", res.Status, res.Raw)
	}
	items := res.Body["items"].([]any)
	if len(items) != 2 || items[0].(map[string]any)["sku"] != "MUG-1" || items[1].(map[string]any)["quantity"] != float64(3) ||
		items[1].(map[string]any)["unitPriceCents"] != float64(450) {
		t.Fatalf("items: %v", items)
	}
	sg := res.Body["saga"].(map[string]any)
	hist := sg["history"].([]any)
	if sg["id"] != id || sg["status"] != "running" || sg["step"] != app.StepReserveStock || len(hist) != 2 ||
		hist[0].(map[string]any)["step"] != app.StepCreateOrder || hist[0].(map[string]any)["outcome"] != "succeeded" ||
		hist[1].(map[string]any)["step"] != app.StepReserveStock || hist[1].(map[string]any)["outcome"] != nil {
		t.Fatalf("saga: %v", sg)
	}

	res = testkit.Call(t, b.h, "GET", "/orders", nil, testkit.Bearer(b.user)...)
	if list := res.Body["orders"].([]any); res.Status != 200 || len(list) != 1 || list[0].(map[string]any)["orderId"] != id {
		t.Fatalf("list: %d %s", res.Status, res.Raw)
	}
}

// Every bad POST /orders gets a clear 4xx and writes nothing: no order, no
// saga, no event, no command.
func TestBadOrderRequestsWriteNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	expired := b.sign(t, -time.Hour)
	ok := `{"items":[{"sku":"TEA-1","quantity":1}]}`
	manyLines := `{"items":[` + strings.Repeat(`{"sku":"TEA-1","quantity":1},`, domain.MaxLines) + `{"sku":"TEA-1","quantity":1}]}`
	cases := []struct {
		name, body string
		headers    []string
		status     int
		code       string
	}{
		{"no token", ok, nil, 401, "missing_token"},
		{"invalid token", ok, testkit.Bearer("x.y.z"), 401, "invalid_token"},
		{"not a bearer token", ok, []string{"Authorization", "Basic dTpw"}, 401, "invalid_token"},
		{"expired token", ok, testkit.Bearer(expired), 401, "token_expired"},
		{"token of another issuer", ok, testkit.Bearer(b.foreignToken(t)), 401, "invalid_token"},
		{"admin role", ok, testkit.Bearer(b.admin), 403, "forbidden"},
		{"malformed", `{"items":[`, testkit.Bearer(b.user), 400, "malformed_json"},
		{"empty body", ``, testkit.Bearer(b.user), 400, "empty_body"},
		{"not an object", `[]`, testkit.Bearer(b.user), 400, "malformed_json"},
		{"unknown field", `{"items":[{"sku":"TEA-1","quantity":1}],"coupon":"FREE"}`, testkit.Bearer(b.user), 400, "unknown_field"},
		{"unknown line field", `{"items":[{"sku":"TEA-1","quantity":1,"unitPriceCents":1}]}`, testkit.Bearer(b.user), 400, "unknown_field"},
		{"trailing data", ok + `{}`, testkit.Bearer(b.user), 400, "malformed_json"},
		{"oversized", `{"items":[{"sku":"` + strings.Repeat("A", httpx.MaxBodyBytes) + `","quantity":1}]}`, testkit.Bearer(b.user), 413, "body_too_large"},
		{"wrong content type", ok, append(testkit.Bearer(b.user), "Content-Type", "text/plain"), 415, "unsupported_media_type"},
		{"no items", `{"items":[]}`, testkit.Bearer(b.user), 400, "validation_failed"},
		{"missing items", `{}`, testkit.Bearer(b.user), 400, "validation_failed"},
		{"too many lines", manyLines, testkit.Bearer(b.user), 400, "validation_failed"},
		{"missing quantity", `{"items":[{"sku":"TEA-1"}]}`, testkit.Bearer(b.user), 400, "validation_failed"},
		{"zero quantity", `{"items":[{"sku":"TEA-1","quantity":0}]}`, testkit.Bearer(b.user), 400, "validation_failed"},
		{"negative quantity", `{"items":[{"sku":"TEA-1","quantity":-3}]}`, testkit.Bearer(b.user), 400, "validation_failed"},
		{"huge quantity", `{"items":[{"sku":"TEA-1","quantity":1001}]}`, testkit.Bearer(b.user), 400, "validation_failed"},
		{"lines adding up too much", `{"items":[{"sku":"TEA-1","quantity":600},{"sku":"tea-1","quantity":600}]}`, testkit.Bearer(b.user), 400, "validation_failed"},
		{"fractional quantity", `{"items":[{"sku":"TEA-1","quantity":1.5}]}`, testkit.Bearer(b.user), 400, "invalid_field"},
		{"quantity as string", `{"items":[{"sku":"TEA-1","quantity":"2"}]}`, testkit.Bearer(b.user), 400, "invalid_field"},
		{"quantity beyond int", `{"items":[{"sku":"TEA-1","quantity":1e40}]}`, testkit.Bearer(b.user), 400, "invalid_field"},
		{"missing sku", `{"items":[{"quantity":1}]}`, testkit.Bearer(b.user), 400, "validation_failed"},
		{"bad sku", `{"items":[{"sku":"tea 1","quantity":1}]}`, testkit.Bearer(b.user), 400, "validation_failed"},
		{"unknown sku", `{"items":[{"sku":"TEA-1","quantity":1},{"sku":"nope","quantity":1}]}`, testkit.Bearer(b.user), 422, "unknown_sku"},
		{"empty idempotency key", ok, append(testkit.Bearer(b.user), "Idempotency-Key", ""), 400, "validation_failed"},
		{"long idempotency key", ok, append(testkit.Bearer(b.user), "Idempotency-Key", strings.Repeat("k", 256)), 400, "validation_failed"},
	}
	for _, c := range cases {
		res := testkit.Call(t, b.h, "POST", "/orders", c.body, c.headers...)
		if res.Status != c.status || res.Code() != c.code || res.Body["error"] == "" {
			t.Errorf("%s: %d %s, want %d %s", c.name, res.Status, res.Raw, c.status, c.code)
		}
	}
	res := b.place(t, b.user, `{"items":[{"sku":"NOPE","quantity":1}]}`)
	if skus, _ := res.Body["skus"].([]any); len(skus) != 1 || skus[0] != "NOPE" {
		t.Errorf("unknown sku names it: %s", res.Raw)
	}
	if got := b.written(t); got != "orders 0, sagas 0, outbox 0" {
		t.Fatalf("bad requests wrote: %s", got)
	}
}

func TestCatalogDownRefusesTheOrderAndWritesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.catalog.down = true
	res := b.place(t, b.user, `{"items":[{"sku":"TEA-1","quantity":1}]}`)
	if res.Status != 503 || res.Code() != "catalog_unavailable" {
		t.Fatalf("%d %s", res.Status, res.Raw)
	}
	if got := b.written(t); got != "orders 0, sagas 0, outbox 0" {
		t.Fatalf("wrote: %s", got)
	}
}

// A retried request with the same Idempotency-Key gets the same order and
// writes nothing more; a different order under the same key is refused;
// concurrent first attempts make one order.
func TestIdempotencyKeyMakesRetriesSafe(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := `{"items":[{"sku":"TEA-1","quantity":2}]}`
	key := []string{"Idempotency-Key", "order-42"}
	first := b.place(t, b.user, body, key...)
	if first.Status != 202 || first.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first: %d %s", first.Status, first.Raw)
	}
	// The same request, spelled differently (case, split lines): the same.
	for _, retry := range []string{body, `{"items":[{"sku":"tea-1","quantity":1},{"sku":"TEA-1","quantity":1}]}`} {
		res := b.place(t, b.user, retry, key...)
		if res.Status != 202 || res.Body["orderId"] != first.Body["orderId"] || res.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("retry: %d %s", res.Status, res.Raw)
		}
	}
	// The catalog being down does not stop a retry from being answered.
	b.catalog.down = true
	if res := b.place(t, b.user, body, key...); res.Status != 202 || res.Body["orderId"] != first.Body["orderId"] {
		t.Fatalf("retry with the catalog down: %d %s", res.Status, res.Raw)
	}
	b.catalog.down = false
	if res := b.place(t, b.user, `{"items":[{"sku":"TEA-1","quantity":3}]}`, key...); res.Status != 422 || res.Code() != "idempotency_key_reused" {
		t.Fatalf("different body, same key: %d %s", res.Status, res.Raw)
	}
	if got := b.written(t); got != "orders 1, sagas 1, outbox 2" {
		t.Fatalf("retries wrote: %s", got)
	}
	// Keys are per user.
	if res := b.place(t, b.other, body, key...); res.Status != 202 || res.Body["orderId"] == first.Body["orderId"] {
		t.Fatalf("another user's key: %d %s", res.Status, res.Raw)
	}

	// Ten concurrent first attempts with a new key: one order, one saga.
	const n = 10
	ids := make([]any, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res := b.place(t, b.user, body, "Idempotency-Key", "order-43")
			if res.Status != 202 {
				t.Errorf("concurrent %d: %d %s", i, res.Status, res.Raw)
			}
			ids[i] = res.Body["orderId"]
		})
	}
	wg.Wait()
	for i := range ids {
		if ids[i] != ids[0] {
			t.Fatalf("concurrent attempts made different orders: %v", ids)
		}
	}
	if got := b.written(t); got != "orders 3, sagas 3, outbox 6" {
		t.Fatalf("after concurrent attempts: %s", got)
	}
}

// A user sees only their own orders: another user's order is a 404, as if
// it did not exist, and is not listed.
func TestOrdersAreVisibleToTheirOwnerOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res := b.place(t, b.user, `{"items":[{"sku":"TEA-1","quantity":1}]}`)
	id := res.Body["orderId"].(string)
	if res := testkit.Call(t, b.h, "GET", "/orders/"+id, nil, testkit.Bearer(b.other)...); res.Status != 404 || res.Code() != "order_not_found" {
		t.Fatalf("another user: %d %s", res.Status, res.Raw)
	}
	for _, path := range []string{"/orders/" + uuid.NewString(), "/orders/not-a-uuid"} {
		if res := testkit.Call(t, b.h, "GET", path, nil, testkit.Bearer(b.user)...); res.Status != 404 || res.Code() != "order_not_found" {
			t.Fatalf("%s: %d %s", path, res.Status, res.Raw)
		}
	}
	if res := testkit.Call(t, b.h, "GET", "/orders", nil, testkit.Bearer(b.other)...); res.Status != 200 || len(res.Body["orders"].([]any)) != 0 {
		t.Fatalf("another user's list: %d %s", res.Status, res.Raw)
	}
	if res := testkit.Call(t, b.h, "GET", "/orders/"+id, nil); res.Status != 401 {
		t.Fatalf("no token: %d %s", res.Status, res.Raw)
	}
}

func TestListOrdersPagesNewestFirst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var ids []string
	for range 5 {
		res := b.place(t, b.user, `{"items":[{"sku":"TEA-1","quantity":1}]}`)
		ids = append(ids, res.Body["orderId"].(string))
	}
	var seen []string
	path := "/orders?limit=2"
	for range 4 {
		res := testkit.Call(t, b.h, "GET", path, nil, testkit.Bearer(b.user)...)
		if res.Status != 200 {
			t.Fatalf("%s: %d %s", path, res.Status, res.Raw)
		}
		for _, o := range res.Body["orders"].([]any) {
			seen = append(seen, o.(map[string]any)["orderId"].(string))
		}
		next, ok := res.Body["nextBefore"].(string)
		if !ok {
			break
		}
		path = "/orders?limit=2&before=" + next
	}
	if len(seen) != 5 || seen[0] != ids[4] || seen[4] != ids[0] {
		t.Fatalf("pages: %v, placed %v", seen, ids)
	}
	for _, q := range []string{"limit=0", "limit=101", "limit=x", "before=x"} {
		if res := testkit.Call(t, b.h, "GET", "/orders?"+q, nil, testkit.Bearer(b.user)...); res.Status != 400 {
			t.Errorf("%s: %d %s", q, res.Status, res.Raw)
		}
	}
}

func TestServesHealthMetricsAndOpenAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
		if res := testkit.Call(t, b.h, "GET", path, nil); res.Status != 200 {
			t.Errorf("%s: %d %s", path, res.Status, res.Raw)
		}
	}
	testkit.CheckOpenAPI(t, b.h, ports.OpenAPI, "POST /orders", "GET /orders", "GET /orders/{id}",
		"GET /healthz", "GET /readyz", "GET /metrics", "GET /openapi.json")
	testkit.CheckOpenAPICamelCase(t, ports.OpenAPI)
}

func TestConfigFromEnvironment(t *testing.T) {
	for k, v := range map[string]string{"DATABASE_URL": "postgres://x/orders", "JWKS_URL": "http://users:8001/.well-known/jwks.json",
		"CATALOG_URL": "http://catalog:8002", "KAFKA_BROKERS": "k1:9092,k2:9092", "SCHEMA_REGISTRY_URL": "http://sr:8081"} {
		t.Setenv(k, v)
	}
	cfg, err := orderservice.ConfigFromEnv()
	testkit.Must(t, err, "config")
	if cfg.Addr != ":8003" || cfg.CatalogURL != "http://catalog:8002" || cfg.Issuer != "sagabox-users" || cfg.Audience != "sagabox" ||
		len(cfg.Messaging.Brokers) != 2 {
		t.Fatalf("%+v", cfg)
	}
	t.Setenv("DATABASE_URL", "")
	if _, err := orderservice.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Fatalf("missing DATABASE_URL: %v", err)
	}
	if _, err := orderservice.New(context.Background(), orderservice.Config{DatabaseURL: "postgres://x", JWKSURL: "http://u", CatalogURL: "catalog:8002"}); err == nil ||
		!strings.Contains(err.Error(), "CATALOG_URL") {
		t.Fatalf("bad CATALOG_URL: %v", err)
	}
}

// sign issues a token with the test's key whose clock is off by skew.
func (b bundle) sign(t *testing.T, skew time.Duration) string {
	t.Helper()
	past, err := auth.NewIssuer(auth.IssuerConfig{Key: b.key, Issuer: orderservice.DefaultIssuer,
		Audience: orderservice.DefaultAudience, TTL: time.Minute, Now: func() time.Time { return time.Now().Add(skew) }})
	testkit.Must(t, err, "issuer")
	tok, _, err := past.Issue(b.userID, auth.RoleUser)
	testkit.Must(t, err, "issue")
	return tok
}

// foreignToken is a well-formed token signed by a key the service does not
// trust.
func (b bundle) foreignToken(t *testing.T) string {
	t.Helper()
	other, err := auth.NewIssuer(auth.IssuerConfig{Key: auth.GenerateKey(), Issuer: orderservice.DefaultIssuer, Audience: orderservice.DefaultAudience})
	testkit.Must(t, err, "issuer")
	tok, _, err := other.Issue(b.userID, auth.RoleUser)
	testkit.Must(t, err, "issue")
	return tok
}

// Issue 11.5: a NUL byte or invalid UTF-8 in a path, a query or a JSON
// string is a 400 naming the field, and writes nothing.
func TestInvalidTextIsA400NamingTheField(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, c := range []struct{ name, method, path, body, field string }{
		{"NUL in a SKU", "POST", "/orders", `{"items":[{"sku":"TEA-1","quantity":1},{"sku":"TEA\u0000","quantity":1}]}`, "items[1].sku"},
		{"invalid UTF-8 in a SKU", "POST", "/orders", "{\"items\":[{\"sku\":\"TEA\xff\",\"quantity\":1}]}", "items[0].sku"},
		{"NUL in an order path", "GET", "/orders/%00", "", "path"},
		{"NUL in the cursor", "GET", "/orders?before=%00", "", "before"},
		{"invalid UTF-8 in the limit", "GET", "/orders?limit=%ff", "", "limit"},
	} {
		var body any
		if c.body != "" {
			body = c.body
		}
		res := testkit.Call(t, b.h, c.method, c.path, body, testkit.Bearer(b.user)...)
		if res.Status != 400 || res.Code() != "invalid_text" || res.Body["field"] != c.field {
			t.Errorf("%s: %d %s, want 400 invalid_text naming %s", c.name, res.Status, res.Raw, c.field)
		}
	}
	if got := b.written(t); got != "orders 0, sagas 0, outbox 0" {
		t.Fatalf("written: %s", got)
	}
}

// Issue 11.8: a read whose pooled connection the server has just
// terminated (a restart, a failover, pg_terminate_backend) is retried once
// on a fresh connection instead of answering 500.
func TestReadsRetryOnceWhenTheirConnectionWasTerminated(t *testing.T) {
	t.Parallel()
	ctx := testkit.Ctx(t)
	b := setup(t)
	// A pool of the service's own that never pings before handing out a
	// connection, so the terminated one is what the read gets.
	pc, err := pgxpool.ParseConfig(b.db.URL)
	testkit.Must(t, err, "parse")
	pc.MaxConns = 2
	pc.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	testkit.Must(t, err, "pool")
	defer pool.Close()
	verifier, err := auth.NewVerifier(auth.VerifierConfig{
		Keys:   func(context.Context) ([]byte, error) { return b.issuer.JWKS(), nil },
		Issuer: orderservice.DefaultIssuer, Audience: orderservice.DefaultAudience})
	testkit.Must(t, err, "verifier")
	svc, err := orderservice.New(ctx, orderservice.Config{Pool: pool, Verifier: verifier, Catalog: b.catalog})
	testkit.Must(t, err, "orderservice on the pool")
	defer svc.Close()
	h := svc.Handler()

	res := testkit.Call(t, h, "POST", "/orders", `{"items":[{"sku":"TEA-1","quantity":1}]}`, testkit.Bearer(b.user)...)
	if res.Status != 202 {
		t.Fatalf("place: %d %s", res.Status, res.Raw)
	}
	id := res.Body["orderId"].(string)
	for _, path := range []string{"/orders/" + id, "/orders"} {
		if res := testkit.Call(t, h, "GET", path, nil, testkit.Bearer(b.user)...); res.Status != 200 {
			t.Fatalf("GET %s before: %d %s", path, res.Status, res.Raw)
		}
		admin, err := pgx.Connect(ctx, testkit.AdminURL())
		testkit.Must(t, err, "admin connection")
		var killed int
		testkit.Must(t, admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
			b.db.Name).Scan(&killed), "terminate")
		testkit.Eventually(t, 30*time.Second, "the terminated backends to be gone", func() bool {
			var n int
			testkit.Must(t, admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1`, b.db.Name).Scan(&n), "count")
			return n == 0
		})
		admin.Close(ctx)
		if killed == 0 {
			t.Fatal("no pooled connection to terminate")
		}
		if res := testkit.Call(t, h, "GET", path, nil, testkit.Bearer(b.user)...); res.Status != 200 {
			t.Fatalf("GET %s after its connection was terminated: %d %s", path, res.Status, res.Raw)
		}
	}
}

// Issue 11.3: a customer's PENDING orders are capped: one more is a 429
// with Retry-After that writes nothing, also when the orders arrive at once;
// other customers are not affected, and a decided order frees its place.
func TestPendingOrdersAreCappedPerCustomer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	verifier, err := auth.NewVerifier(auth.VerifierConfig{
		Keys:   func(context.Context) ([]byte, error) { return b.issuer.JWKS(), nil },
		Issuer: orderservice.DefaultIssuer, Audience: orderservice.DefaultAudience})
	testkit.Must(t, err, "verifier")
	svc, err := orderservice.New(testkit.Ctx(t), orderservice.Config{Pool: b.db.Pool, Verifier: verifier, Catalog: b.catalog, MaxPendingOrders: 3})
	testkit.Must(t, err, "orderservice")
	defer svc.Close()
	place := func(token string) testkit.Response {
		return testkit.Call(t, svc.Handler(), "POST", "/orders", `{"items":[{"sku":"TEA-1","quantity":1}]}`, testkit.Bearer(token)...)
	}
	// Six at once (no Kafka here: they all stay PENDING): three pass.
	var mu sync.Mutex
	statuses := map[int]int{}
	var refused testkit.Response
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			res := place(b.user)
			mu.Lock()
			defer mu.Unlock()
			statuses[res.Status]++
			if res.Status == 429 {
				refused = res
			}
		})
	}
	wg.Wait()
	if statuses[202] != 3 || statuses[429] != 3 {
		t.Fatalf("statuses %v, want 3 × 202 and 3 × 429", statuses)
	}
	if refused.Code() != "too_many_pending_orders" || refused.Header.Get("Retry-After") == "" || refused.Body["maxPendingOrders"] != float64(3) {
		t.Fatalf("refusal: %v %s", refused.Header, refused.Raw)
	}
	if got := b.written(t); got != "orders 3, sagas 3, outbox 6" {
		t.Fatalf("written: %s", got)
	}
	if res := place(b.other); res.Status != 202 {
		t.Fatalf("another customer: %d %s", res.Status, res.Raw)
	}
	_, err = b.db.Pool.Exec(context.Background(), `UPDATE orders SET status = 'CANCELLED' WHERE id = (SELECT id FROM orders WHERE user_id = $1 LIMIT 1)`, b.userID)
	testkit.Must(t, err, "decide one")
	if res := place(b.user); res.Status != 202 {
		t.Fatalf("after one was decided: %d %s", res.Status, res.Raw)
	}
}
