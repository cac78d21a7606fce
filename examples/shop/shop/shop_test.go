package shop_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/examples/shop/shop"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
	useradapters "github.com/sagabox/sagabox/userservice/adapters"
)

// Timings for a test on a busy machine (make test-loaded: both cores taken
// by other work), not production's: nothing here is meant to time out, so a
// slow machine must make a test slower, never make it fail. The production
// defaults (a 3 s SKU check, a 30 s step attempt) cancelled or refused up
// to half of TestTwoHundredConcurrentOrdersForFiveUnitsApproveExactlyFive's
// orders under load (issue 12).
const (
	testStepTimeout    = 3 * time.Minute  // one attempt of reserve_stock or debit_credit
	testCatalogTimeout = 2 * time.Minute  // orderservice's SKU check of one order
	testDeadline       = 10 * time.Minute // a whole test
	testViewCatchUp    = 3 * time.Minute  // the catalog's view of a decided order
	testPollEvery      = 500 * time.Millisecond
	testRequestTimeout = 2 * time.Minute // one HTTP request of the client
)

// setup starts a shop on random ports against fresh databases on the test
// server, closed (and its databases dropped) when the test ends.
func setup(t *testing.T) (*shop.Shop, *shop.Client, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	t.Cleanup(cancel)
	s, err := shop.Start(ctx, shop.Config{DatabaseURL: testkit.AdminURL(), Fresh: true,
		PasswordParams:  useradapters.Argon2idParams{Memory: 64, Time: 1, Threads: 1},
		SagaStepTimeout: testStepTimeout, CatalogTimeout: testCatalogTimeout})
	if err != nil {
		t.Fatalf("start the shop: %v", err)
	}
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := s.Close(); err != nil {
			t.Errorf("close the shop: %v", err)
		}
	})
	c := s.Client()
	c.HTTP = &http.Client{Transport: tr, Timeout: testRequestTimeout}
	return s, c, ctx
}

// The demo's scenario, end to end over HTTP and Kafka: an affordable order
// is approved and charged; one beyond the credit is cancelled with its
// stock given back and the credit untouched; one beyond the stock is
// cancelled with nothing taken. The catalog's read model reaches each final
// status, and nobody else can see the orders.
func TestScenarioApprovesOneOrderAndCancelsTwoForCreditAndStock(t *testing.T) {
	t.Parallel()
	_, c, ctx := setup(t)

	var out strings.Builder
	r, err := c.PlayScenario(ctx, &out)
	t.Log(out.String())
	if err != nil {
		t.Fatalf("scenario: %v", err)
	}
	check := func(name string, o shop.Order, status, reason, sagaStatus, history string) {
		t.Helper()
		if o.Status != status || o.Reason != reason || o.Saga.Status != sagaStatus {
			t.Errorf("%s order: %s %q saga %s, want %s %q saga %s", name, o.Status, o.Reason, o.Saga.Status, status, reason, sagaStatus)
		}
		if h := steps(o); h != history {
			t.Errorf("%s order's history: %s\nwant %s", name, h, history)
		}
	}
	check("affordable", r.Approved, "APPROVED", "", "succeeded",
		"create_order succeeded, reserve_stock succeeded, debit_credit succeeded, approve_order succeeded")
	check("too expensive", r.NoCredit, "CANCELLED", "insufficient credit", "compensated",
		"create_order succeeded, reserve_stock succeeded, debit_credit rejected, undo reserve_stock succeeded, undo create_order succeeded")
	check("out of stock", r.NoStock, "CANCELLED", "insufficient stock", "compensated",
		"create_order succeeded, reserve_stock rejected, undo create_order succeeded")

	// Only the approved order was charged, and only its stock is gone.
	if got, err := c.Credit(ctx, r.Customer); err != nil || got != r.StartCredit-r.Approved.TotalCents || r.Approved.TotalCents != 2*450+1200 {
		t.Errorf("credit %d (%v), want %d - %d", got, err, r.StartCredit, r.Approved.TotalCents)
	}
	for sku, want := range map[string]int{"TEA-1": 1000 - 2, "MUG-1": 500 - 1, "LAMP-1": 50, "POSTER-1": 3} {
		if p, err := c.Product(ctx, sku); err != nil || p.Stock != want {
			t.Errorf("stock of %s: %d (%v), want %d", sku, p.Stock, err, want)
		}
	}

	// The catalog learns each outcome from order.events.
	for _, o := range []shop.Order{r.Approved, r.NoCredit, r.NoStock} {
		var v shop.CatalogOrder
		testkit.Eventually(t, testViewCatchUp, "the catalog's view of "+o.OrderID, func() bool {
			v, err = c.CatalogOrder(ctx, r.Customer.Token, o.OrderID)
			return err == nil && v.Status == o.Status
		})
		if v.Reason != o.Reason || v.UserID != r.Customer.UserID {
			t.Errorf("catalog's view of %s: %+v, want reason %q, user %s", o.OrderID, v, o.Reason, r.Customer.UserID)
		}
	}

	// Another customer's order does not exist, for the orders nor the catalog.
	bob, err := c.Customer(ctx, "bob@example.com", "Bob")
	testkit.Must(t, err, "bob")
	if _, err := c.Order(ctx, bob.Token, r.Approved.OrderID); shop.StatusOf(err) != 404 {
		t.Errorf("Bob reading Ann's order: %v, want 404", err)
	}
	if _, err := c.CatalogOrder(ctx, bob.Token, r.Approved.OrderID); shop.StatusOf(err) != 404 {
		t.Errorf("Bob reading the catalog's view of Ann's order: %v, want 404", err)
	}
}

// 200 orders in flight at once for the last 5 units: exactly 5 are
// approved, 195 cancelled for stock; the stock ends at 0, never below; each
// customer pays for their approved orders only, once.
func TestTwoHundredConcurrentOrdersForFiveUnitsApproveExactlyFive(t *testing.T) {
	t.Parallel()
	s, c, ctx := setup(t)
	const customers, perCustomer, units, price = 20, 10, 5, 100
	testkit.Must(t, c.AddProduct(ctx, s.Admin.Token, shop.Product{SKU: "SCARCE-1", Name: "Scarce", Price: price, Stock: units}), "add product")

	sessions := make([]shop.Session, customers)
	for i := range sessions {
		var err error
		sessions[i], err = c.Customer(ctx, fmt.Sprintf("c%d@example.com", i), "Customer")
		testkit.Must(t, err, "customer %d", i)
	}

	type result struct {
		customer int
		order    shop.Order
		err      error
	}
	results := make(chan result, customers*perCustomer)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range customers {
		for range perCustomer {
			wg.Go(func() {
				<-start
				id, err := c.PlaceOrder(ctx, sessions[i].Token, shop.Line{SKU: "SCARCE-1", Quantity: 1})
				if err != nil {
					results <- result{i, shop.Order{}, err}
					return
				}
				o, err := c.AwaitDecided(ctx, sessions[i].Token, id, testPollEvery)
				results <- result{i, o, err}
			})
		}
	}
	close(start)
	wg.Wait()
	close(results)

	approvedOf := make([]int, customers)
	var approved, cancelled int
	for r := range results {
		switch {
		case r.err != nil:
			t.Errorf("customer %d: %v", r.customer, r.err)
		case r.order.Status == "APPROVED":
			approved++
			approvedOf[r.customer]++
		case r.order.Status == "CANCELLED" && r.order.Reason == "insufficient stock":
			cancelled++
		default:
			t.Errorf("order %s: %s %q", r.order.OrderID, r.order.Status, r.order.Reason)
		}
	}
	p, err := c.Product(ctx, "SCARCE-1")
	testkit.Must(t, err, "product")
	if approved != units || cancelled != customers*perCustomer-units || p.Stock != 0 {
		t.Fatalf("approved %d, cancelled %d, stock left %d; want %d, %d, 0", approved, cancelled, p.Stock, units, customers*perCustomer-units)
	}
	for i, sess := range sessions {
		credit, err := c.Credit(ctx, sess)
		testkit.Must(t, err, "credit")
		if charged := 10000 - credit; charged != int64(price*approvedOf[i]) {
			t.Errorf("customer %d charged %d for %d approved orders", i, charged, approvedOf[i])
		}
	}
}

// The demo's output names every step of every saga.
func TestScenarioPrintsEachSagasTimeline(t *testing.T) {
	t.Parallel()
	o := shop.Order{Status: "CANCELLED", Reason: "insufficient stock", CreatedAt: time.Unix(0, 0),
		Saga: &shop.Saga{Status: "compensated", History: []shop.Attempt{
			{Step: "create_order", Attempt: 1, Outcome: "succeeded", StartedAt: time.Unix(0, 0)},
			{Step: "reserve_stock", Attempt: 1, Outcome: "rejected", Error: "insufficient stock for X", StartedAt: time.Unix(0, 5e6)},
			{Step: "create_order", Compensation: true, Attempt: 1, Outcome: "succeeded", StartedAt: time.Unix(0, 9e6)},
		}}}
	var b strings.Builder
	shop.WriteTimeline(&b, o, 42*time.Millisecond)
	for _, want := range []string{"CANCELLED: insufficient stock after 42ms (saga compensated)",
		"+5ms    reserve_stock        attempt 1  rejected (insufficient stock for X)", "undo create_order"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("timeline lacks %q:\n%s", want, b.String())
		}
	}
}

func steps(o shop.Order) string {
	var out []string
	for _, a := range o.Saga.History {
		s := a.Step + " " + a.Outcome
		if a.Compensation {
			s = "undo " + s
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// The scenario's last order is left failed on purpose: the payment
// processor is down, the pivot's outcome stays unknown, and the saga ends
// failed with the stock reserved and nothing debited. The console lists it;
// a retry once the processor is back approves the order and charges it once.
func TestScenarioLeavesOneSagaFailedForTheConsole(t *testing.T) {
	t.Parallel()
	s, c, ctx := setup(t)
	var out strings.Builder
	r, err := c.PlayScenario(ctx, &out)
	if err != nil {
		t.Fatalf("scenario: %v\n%s", err, out.String())
	}
	credit, err := c.Credit(ctx, r.Customer)
	testkit.Must(t, err, "credit")
	mugs, err := c.Product(ctx, "MUG-1")
	testkit.Must(t, err, "mugs")
	o, err := s.LeaveOneFailed(ctx, &out, r.Customer)
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	if o.Status != "PENDING" || o.Saga.Status != "failed" {
		t.Fatalf("order %s saga %s, want PENDING and failed", o.Status, o.Saga.Status)
	}
	for _, s := range []string{s.ConsoleURL + "sagas?failed=1", "saga retry " + o.Saga.ID, "-database-url '" + s.OrdersDatabaseURL + "'"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("the scenario does not print %q", s)
		}
	}
	if got, _ := c.Credit(ctx, r.Customer); got != credit {
		t.Errorf("credit %d, want %d: nothing is debited while payments are down", got, credit)
	}
	if p, _ := c.Product(ctx, "MUG-1"); p.Stock != mugs.Stock-1 {
		t.Errorf("mugs %d, want %d: the failed saga keeps its reservation", p.Stock, mugs.Stock-1)
	}

	// The console over the order service's database lists it.
	res, err := http.Get(s.ConsoleURL + "sagas?failed=1")
	testkit.Must(t, err, "console")
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `data-saga="`+o.Saga.ID+`" data-status="failed"`) {
		t.Fatalf("the console does not list the failed saga: %d\n%s", res.StatusCode, body)
	}

	// An operator retries it (as the console's button and the CLI do).
	pool, err := pgxpool.New(ctx, s.OrdersDatabaseURL)
	testkit.Must(t, err, "pool")
	defer pool.Close()
	testkit.Must(t, saga.NewAdmin(pool).Retry(ctx, uuid.MustParse(o.Saga.ID), saga.ActionOptions{Actor: "test", Reason: "payments are back"}), "retry")
	done, err := c.AwaitDecided(ctx, r.Customer.Token, o.OrderID, 50*time.Millisecond)
	testkit.Must(t, err, "await")
	if done.Status != "APPROVED" || done.Saga.Status != "succeeded" {
		t.Errorf("after the retry: %s, saga %s", done.Status, done.Saga.Status)
	}
	if got, _ := c.Credit(ctx, r.Customer); got != credit-1200 {
		t.Errorf("credit %d, want %d: charged once", got, credit-1200)
	}
}
