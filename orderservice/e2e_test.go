package orderservice_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/jackc/pgx/v5/pgxpool"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/catalogservice"
	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/config"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/orderservice"
	"github.com/sagabox/sagabox/orderservice/adapters"
	"github.com/sagabox/sagabox/orderservice/app"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
	"github.com/sagabox/sagabox/userservice"
	useradapters "github.com/sagabox/sagabox/userservice/adapters"
)

// Timings for tests on a busy machine (make test-loaded), not production's:
// nothing in these tests is meant to time out, so a slow machine must make
// them slower, never make them fail (issue 12: the 3 s SKU check and the
// 30 s step attempt refused and cancelled orders under load).
const (
	e2eStepTimeout    = 3 * time.Minute // one attempt of reserve_stock or debit_credit
	e2eCatalogTimeout = 2 * time.Minute // the SKU check of one order
	e2eDecided        = 5 * time.Minute // an order, from placed to decided
)

// shop is the three services running in one process, each with its own
// database and HTTP server on a random port, sharing one Kafka (kfake) and
// one Schema Registry (srfake): what docker-compose runs, in a test.
type shop struct {
	users, catalog, orders string // base URLs
	admin                  string // token
	brokers                []string
	wg                     sync.WaitGroup
	errs                   chan error
}

func startShop(t *testing.T, ctx context.Context) *shop {
	t.Helper()
	return startShopWithPools(t, ctx, 0)
}

// startShopWithPools starts the three services; maxConns > 0 gives each
// service a pool of that many connections instead of the test kit's 16.
func startShopWithPools(t *testing.T, ctx context.Context, maxConns int) *shop {
	t.Helper()
	return startShopWith(t, ctx, shopOptions{maxConns: maxConns})
}

type shopOptions struct {
	maxConns int
	// catalog, when set, wraps the order service's catalog client; it gets
	// the catalog's database.
	catalog func(c app.Catalog, catalogDB *pgxpool.Pool) app.Catalog
	// tp, when set, gives each service its tracer provider (nil: the
	// global one).
	tp func(service string) trace.TracerProvider
}

func startShopWith(t *testing.T, ctx context.Context, opts shopOptions) *shop {
	t.Helper()
	maxConns := opts.maxConns
	tp := opts.tp
	if tp == nil {
		tp = func(string) trace.TracerProvider { return nil }
	}
	pool := func() *pgxpool.Pool {
		db := testkit.NewDatabase(t)
		if maxConns <= 0 {
			return db.Pool
		}
		cfg, err := pgxpool.ParseConfig(db.URL)
		testkit.Must(t, err, "pool config")
		cfg.MaxConns = int32(maxConns)
		p, err := pgxpool.NewWithConfig(ctx, cfg)
		testkit.Must(t, err, "pool")
		t.Cleanup(p.Close)
		return p
	}
	cluster := testkit.Kafka(t, 3)
	registry := testkit.Registry(t)
	msg := config.Kafka{Brokers: cluster.ListenAddrs(), RegistryURL: registry.URL()}
	s := &shop{errs: make(chan error, 3)}
	listen := func() (net.Listener, string) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		testkit.Must(t, err, "listen")
		return l, "http://" + l.Addr().String()
	}
	run := func(name string, serve func(context.Context, net.Listener) error, l net.Listener) {
		s.wg.Go(func() {
			if err := serve(ctx, l); err != nil {
				s.errs <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}

	ul, uurl := listen()
	users, err := userservice.New(ctx, userservice.Config{Pool: pool(), Messaging: msg, SignupBurst: 1000, TracerProvider: tp(userservice.Name),
		PasswordParams: useradapters.Argon2idParams{Memory: 64, Time: 1, Threads: 1}})
	testkit.Must(t, err, "userservice")
	t.Cleanup(users.Close)
	jwks := uurl + "/.well-known/jwks.json"

	cl, curl := listen()
	catalogDB := pool()
	catalog, err := catalogservice.New(ctx, catalogservice.Config{Pool: catalogDB, JWKSURL: jwks, Messaging: msg,
		TracerProvider: tp(catalogservice.Name)})
	testkit.Must(t, err, "catalogservice")
	t.Cleanup(catalog.Close)

	ol, ourl := listen()
	var catalogClient app.Catalog
	if opts.catalog != nil {
		catalogClient = opts.catalog(adapters.NewCatalog(curl, nil), catalogDB)
	}
	orders, err := orderservice.New(ctx, orderservice.Config{Pool: pool(), JWKSURL: jwks, CatalogURL: curl, Catalog: catalogClient, Messaging: msg,
		MaxPendingOrders: 100, // TestTinyPoolsDoNotDeadlockUnderLoad places 24 at once
		Saga:             saga.Config{PollInterval: 100 * time.Millisecond}, TracerProvider: tp(orderservice.Name),
		Steps: app.SagaTuning{Timeout: e2eStepTimeout}, CatalogTimeout: e2eCatalogTimeout})
	testkit.Must(t, err, "orderservice")
	t.Cleanup(orders.Close)

	run("userservice", users.Serve, ul)
	run("catalogservice", catalog.Serve, cl)
	run("orderservice", orders.Serve, ol)
	s.users, s.catalog, s.orders, s.brokers = uurl, curl, ourl, cluster.ListenAddrs()
	s.admin, _, err = users.Issuer().Issue(uuid.NewString(), auth.RoleAdmin)
	testkit.Must(t, err, "admin token")
	return s
}

// call sends a request over the network and decodes the JSON answer.
func call(t *testing.T, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		js, _ := json.Marshal(body)
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequest(method, url, rd)
	testkit.Must(t, err, "request")
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	testkit.Must(t, err, "%s %s", method, url)
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

// customer signs up and logs in; new users have 10000 cents of credit.
func (s *shop) customer(t *testing.T, email string) (id, token string) {
	t.Helper()
	if st, body := call(t, "POST", s.users+"/signup", "", map[string]any{"email": email, "password": "correct horse battery", "name": "Ann"}); st != 201 {
		t.Fatalf("signup: %d %v", st, body)
	}
	st, body := call(t, "POST", s.users+"/login", "", map[string]any{"email": email, "password": "correct horse battery"})
	if st != 200 {
		t.Fatalf("login: %d %v", st, body)
	}
	return body["userId"].(string), body["token"].(string)
}

func (s *shop) credit(t *testing.T, id, token string) float64 {
	t.Helper()
	st, body := call(t, "GET", s.users+"/users/"+id, token, nil)
	if st != 200 {
		t.Fatalf("user: %d %v", st, body)
	}
	return body["creditCents"].(float64)
}

func (s *shop) stock(t *testing.T, sku string) float64 {
	t.Helper()
	st, body := call(t, "GET", s.catalog+"/products/"+sku, "", nil)
	if st != 200 {
		t.Fatalf("product: %d %v", st, body)
	}
	return body["stock"].(float64)
}

// order places an order and waits until the saga has decided it.
func (s *shop) order(t *testing.T, token string, items ...map[string]any) map[string]any {
	t.Helper()
	return s.decided(t, token, s.place(t, token, items...))
}

// place places an order and returns its ID.
func (s *shop) place(t *testing.T, token string, items ...map[string]any) string {
	t.Helper()
	st, body := call(t, "POST", s.orders+"/orders", token, map[string]any{"items": items})
	if st != 202 || body["status"] != "PENDING" {
		t.Fatalf("place: %d %v", st, body)
	}
	return body["orderId"].(string)
}

// decided waits until the saga has decided the order and returns it.
func (s *shop) decided(t *testing.T, token, id string) map[string]any {
	t.Helper()
	var got map[string]any
	var st int
	testkit.Eventually(t, e2eDecided, "order "+id+" to be decided", func() bool {
		st, got = call(t, "GET", s.orders+"/orders/"+id, token, nil)
		sg, _ := got["saga"].(map[string]any)
		return st == 200 && got["status"] != "PENDING" && sg != nil && sg["finishedAt"] != nil
	})
	return got
}

func line(sku string, q int) map[string]any { return map[string]any{"sku": sku, "quantity": q} }

// history lists the saga's attempts as "step outcome" ("undo step outcome"
// for compensations).
func history(order map[string]any) string {
	var out []string
	for _, a := range order["saga"].(map[string]any)["history"].([]any) {
		a := a.(map[string]any)
		s := fmt.Sprintf("%s %v", a["step"], a["outcome"])
		if a["compensation"] == true {
			s = "undo " + s
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// The order saga across the three services, over Kafka: an order is
// approved when stock and credit suffice; cancelled for lack of credit with
// its stock given back and the credit untouched; cancelled for lack of stock
// with nothing taken. Each order's events reach order.events keyed by the
// order, in order. Then every service shuts down cleanly.
func TestOrderSagaAcrossTheThreeServices(t *testing.T) {
	t.Parallel()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	s := startShop(t, ctx)
	for _, p := range []map[string]any{
		{"sku": "TEA-1", "name": "Green tea", "price": 450, "stock": 10},
		{"sku": "LAMP-1", "name": "Lamp", "price": 6000, "stock": 5},
		{"sku": "RARE-1", "name": "Rare tea", "price": 100, "stock": 1},
	} {
		if st, body := call(t, "POST", s.catalog+"/products", s.admin, p); st != 201 {
			t.Fatalf("add product: %d %v", st, body)
		}
	}
	ann, annToken := s.customer(t, "ann@example.com")
	bob, bobToken := s.customer(t, "bob@example.com")

	// The catalog is asked before anything is written.
	if st, body := call(t, "POST", s.orders+"/orders", annToken, map[string]any{"items": []any{line("TEA-1", 1), line("GHOST-1", 1)}}); st != 422 ||
		body["code"] != "unknown_sku" {
		t.Fatalf("unknown SKU: %d %v", st, body)
	}

	approved := s.order(t, annToken, line("TEA-1", 2), line("RARE-1", 1))
	if approved["status"] != "APPROVED" || approved["totalCents"] != float64(1000) || approved["reason"] != nil ||
		approved["saga"].(map[string]any)["status"] != string(saga.StatusSucceeded) {
		t.Fatalf("approved order: %v", approved)
	}
	if h := history(approved); h != "create_order succeeded, reserve_stock succeeded, debit_credit succeeded, approve_order succeeded" {
		t.Fatalf("approved order's history: %s", h)
	}
	if c, st := s.credit(t, ann, annToken), s.stock(t, "TEA-1"); c != 10000-1000 || st != 8 {
		t.Fatalf("after the approved order: credit %v, stock %v", c, st)
	}

	// 2 lamps cost 12000 cents, Bob has 10000.
	noCredit := s.order(t, bobToken, line("LAMP-1", 2))
	if noCredit["status"] != "CANCELLED" || noCredit["reason"] != "insufficient credit" ||
		noCredit["saga"].(map[string]any)["status"] != string(saga.StatusCompensated) {
		t.Fatalf("order without credit: %v", noCredit)
	}
	if h := history(noCredit); h != "create_order succeeded, reserve_stock succeeded, debit_credit rejected, undo reserve_stock succeeded, undo create_order succeeded" {
		t.Fatalf("order without credit's history: %s", h)
	}
	if c, st := s.credit(t, bob, bobToken), s.stock(t, "LAMP-1"); c != 10000 || st != 5 {
		t.Fatalf("after the order without credit: credit %v (want untouched), stock %v (want given back)", c, st)
	}

	// RARE-1's only unit went to Ann.
	noStock := s.order(t, bobToken, line("RARE-1", 1), line("TEA-1", 1))
	if noStock["status"] != "CANCELLED" || noStock["reason"] != "insufficient stock" {
		t.Fatalf("order without stock: %v", noStock)
	}
	if sg := noStock["saga"].(map[string]any); sg["status"] != string(saga.StatusCompensated) || sg["step"] != "create_order" ||
		!strings.Contains(sg["lastError"].(string), "insufficient stock for RARE-1") {
		t.Fatalf("order without stock's saga: %v", sg)
	}
	if h := history(noStock); h != "create_order succeeded, reserve_stock rejected, undo create_order succeeded" {
		t.Fatalf("order without stock's history: %s", h)
	}
	if c, st := s.credit(t, bob, bobToken), s.stock(t, "TEA-1"); c != 10000 || st != 8 {
		t.Fatalf("after the order without stock: credit %v, stock TEA-1 %v", c, st)
	}

	// Every order's events, keyed by the order, in the order they happened.
	want := map[string]string{
		approved["orderId"].(string): "OrderCreated OrderApproved",
		noCredit["orderId"].(string): "OrderCreated OrderCancelled(insufficient credit)",
		noStock["orderId"].(string):  "OrderCreated OrderCancelled(insufficient stock)",
	}
	events := readEvents(t, s.brokers, 6)
	for id, w := range want {
		if events[id] != w {
			t.Errorf("events of %s: %q, want %q (all: %v)", id, events[id], w, events)
		}
	}

	stop()
	s.stopped(t)
}

// stopped waits for the three services to return from Run after ctx is
// cancelled, cleanly.
func (s *shop) stopped(t *testing.T) {
	t.Helper()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the services did not stop within 60s of shutdown")
	}
	close(s.errs)
	for err := range s.errs {
		t.Errorf("Run: %v", err)
	}
}

// Twenty orders in flight at once for five units: exactly five are
// approved, fifteen cancelled for stock; the stock ends at zero, never
// below; each customer is charged for their approved orders only, once.
func TestConcurrentSagasNeitherOversellNorOvercharge(t *testing.T) {
	t.Parallel()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	s := startShop(t, ctx)
	if st, body := call(t, "POST", s.catalog+"/products", s.admin, map[string]any{"sku": "SCARCE-1", "name": "Scarce", "price": 100, "stock": 5}); st != 201 {
		t.Fatalf("add product: %d %v", st, body)
	}
	type customer struct{ id, token string }
	var customers []customer
	for i := range 4 {
		id, token := s.customer(t, fmt.Sprintf("c%d@example.com", i))
		customers = append(customers, customer{id, token})
	}
	placed := map[string]customer{}
	for range 5 {
		for _, c := range customers {
			placed[s.place(t, c.token, line("SCARCE-1", 1))] = c
		}
	}
	approvedOf := map[string]int{}
	var approved, cancelled int
	for id, c := range placed {
		o := s.decided(t, c.token, id)
		switch {
		case o["status"] == "APPROVED":
			approved++
			approvedOf[c.id]++
		case o["status"] == "CANCELLED" && o["reason"] == "insufficient stock":
			cancelled++
		default:
			t.Errorf("order %s: %v", id, o)
		}
	}
	if approved != 5 || cancelled != 15 || s.stock(t, "SCARCE-1") != 0 {
		t.Fatalf("approved %d, cancelled %d, stock left %v", approved, cancelled, s.stock(t, "SCARCE-1"))
	}
	for _, c := range customers {
		if charged := 10000 - s.credit(t, c.id, c.token); charged != float64(100*approvedOf[c.id]) {
			t.Errorf("customer %s charged %v for %d approved orders", c.id, charged, approvedOf[c.id])
		}
	}
	stop()
	s.stopped(t)
}

// readEvents reads n records of order.events and returns, per key, the
// event names in the order of their partition (one key, one partition).
func readEvents(t *testing.T, brokers []string, n int) map[string]string {
	t.Helper()
	recs := testkit.ReadAll(t, brokers, schemas.TopicOrderEvents, n, e2eDecided)
	if len(recs) != n {
		t.Errorf("read %d records of %s, want %d", len(recs), schemas.TopicOrderEvents, n)
	}
	out := map[string]string{}
	for _, r := range recs {
		name := strings.TrimPrefix(r.Headers[outbox.HeaderType], schemas.Namespace+".")
		if name == "OrderCancelled" {
			var e schemas.OrderCancelled
			if len(r.Value) < 5 || e.Unmarshal(r.Value[5:]) != nil { // Confluent wire format: magic byte, schema ID, Avro
				t.Errorf("OrderCancelled of %s does not decode", r.Key)
			}
			name += "(" + e.Reason + ")"
		}
		if out[r.Key] != "" {
			out[r.Key] += " "
		}
		out[r.Key] += name
	}
	return out
}

// PITFALLS 23: code that holds a transaction and then waits for a second
// pool connection deadlocks once the pool is busy. With every service on a
// pool of two connections and many sagas at once, all of them still finish.
func TestTinyPoolsDoNotDeadlockUnderLoad(t *testing.T) {
	t.Parallel()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	s := startShopWithPools(t, ctx, 2)
	if st, body := call(t, "POST", s.catalog+"/products", s.admin, map[string]any{"sku": "POOL-1", "name": "Pool", "price": 10, "stock": 1000}); st != 201 {
		t.Fatalf("add product: %d %v", st, body)
	}
	_, token := s.customer(t, "pool@example.com")
	const n = 24
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { ids <- s.place(t, token, line("POOL-1", 1)) })
	}
	wg.Wait()
	close(ids)
	for id := range ids {
		if o := s.decided(t, token, id); o["status"] != "APPROVED" {
			t.Errorf("order %s: %v", id, o)
		}
	}
	stop()
	s.stopped(t)
}

// raisePriceAfterQuote is the catalog client of orderservice, raising the
// price of sku in the catalog right after it quoted it: an admin changing
// the price between POST /orders and the saga's reservation.
type raisePriceAfterQuote struct {
	app.Catalog
	db    *pgxpool.Pool
	sku   string
	price int64
}

func (c raisePriceAfterQuote) Prices(ctx context.Context, skus []string) (map[string]int64, error) {
	p, err := c.Catalog.Prices(ctx, skus)
	if err == nil {
		_, err = c.db.Exec(ctx, `UPDATE products SET price_cents = $2 WHERE sku = $1`, c.sku, c.price)
	}
	return p, err
}

// Issue 11.4: a price raised between POST /orders (total 1200) and the
// reservation (5000) is not charged: the order is cancelled with "price
// changed", the stock is given back and the credit untouched; the catalog's
// read model shows the order as it was, at the price it was placed at.
func TestAPriceRaisedAfterTheOrderIsNeverCharged(t *testing.T) {
	t.Parallel()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	s := startShopWith(t, ctx, shopOptions{catalog: func(c app.Catalog, db *pgxpool.Pool) app.Catalog {
		return raisePriceAfterQuote{Catalog: c, db: db, sku: "LAMP-1", price: 5000}
	}})
	if st, body := call(t, "POST", s.catalog+"/products", s.admin, map[string]any{"sku": "LAMP-1", "name": "Lamp", "price": 1200, "stock": 3}); st != 201 {
		t.Fatalf("add product: %d %v", st, body)
	}
	id, token := s.customer(t, "ann@example.com")
	st, placed := call(t, "POST", s.orders+"/orders", token, map[string]any{"items": []any{line("LAMP-1", 1)}})
	if st != 202 {
		t.Fatalf("place: %d %v", st, placed)
	}
	o := s.decided(t, token, placed["orderId"].(string))
	if o["status"] != "CANCELLED" || o["reason"] != "price changed" || o["totalCents"] != float64(1200) {
		t.Fatalf("order: %v (%s)", o, history(o))
	}
	if c := s.credit(t, id, token); c != 10000 {
		t.Fatalf("credit %v: charged for an order it cancelled", c)
	}
	testkit.Eventually(t, 60*time.Second, "the stock to be given back", func() bool { return s.stock(t, "LAMP-1") == 3 })
	stop()
	s.stopped(t)
}

// callWith is call with request headers, returning the response's too.
func callWith(t *testing.T, method, url, token string, body any, headers ...string) (int, http.Header, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		testkit.Must(t, err, "marshal")
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	testkit.Must(t, err, "request")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	testkit.Must(t, err, "%s %s", method, url)
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, res.Header, out
}

// Read-your-writes: a client that writes, then reads, never sees an older
// state than the one it was answered. POST /orders with Prefer: wait=N
// answers the decided order; GET /orders/{id}?wait=N&status=PENDING
// long-polls until the status changes; the catalog's read model, asked for
// at least the order's version, waits for its consumer to get there.
func TestReadYourWrites(t *testing.T) {
	t.Parallel()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	s := startShop(t, ctx)
	if st, body := call(t, "POST", s.catalog+"/products", s.admin, map[string]any{"sku": "RYW-1", "name": "Read", "price": 100, "stock": 10}); st != 201 {
		t.Fatalf("add product: %d %v", st, body)
	}
	_, token := s.customer(t, "ryw@example.com")
	order := map[string]any{"items": []any{line("RYW-1", 1)}}

	st, h, o := callWith(t, "POST", s.orders+"/orders", token, order, "Prefer", "wait=30")
	if st != 201 || o["status"] != "APPROVED" || h.Get("Preference-Applied") != "wait=30" || o["version"] != float64(2) || o["saga"] == nil {
		t.Fatalf("POST with Prefer: wait=30: %d %v %v", st, h, o)
	}
	id := o["orderId"].(string)
	st, _, v := callWith(t, "GET", fmt.Sprintf("%s/catalog/orders/%s?min_version=%v&wait=30", s.catalog, id, o["version"]), token, nil)
	if st != 200 || v["status"] != "APPROVED" || v["version"] != float64(2) || v["totalCents"] != float64(100) {
		t.Fatalf("catalog view at min_version 2: %d %v", st, v)
	}
	// An order from nobody's point of view yet: 409 view_behind, not an
	// older state.
	if st, h, v := callWith(t, "GET", fmt.Sprintf("%s/catalog/orders/%s?min_version=3&wait=0", s.catalog, id), token, nil); st != 409 ||
		v["code"] != "view_behind" || v["version"] != float64(2) || h.Get("Retry-After") == "" {
		t.Fatalf("catalog view ahead of the order: %d %v", st, v)
	}

	st, _, p := callWith(t, "POST", s.orders+"/orders", token, order)
	if st != 202 || p["status"] != "PENDING" || p["version"] != float64(1) {
		t.Fatalf("POST without Prefer: %d %v", st, p)
	}
	st, _, got := callWith(t, "GET", s.orders+"/orders/"+p["orderId"].(string)+"?wait=30&status=PENDING", token, nil)
	if st != 200 || got["status"] != "APPROVED" {
		t.Fatalf("long poll from PENDING: %d %v", st, got)
	}
	if st, _, bad := callWith(t, "GET", s.orders+"/orders/"+id+"?wait=31", token, nil); st != 400 || bad["code"] != "invalid_wait" {
		t.Fatalf("wait=31: %d %v", st, bad)
	}
	stop()
	s.stopped(t)
}
