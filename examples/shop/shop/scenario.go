package shop

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// DemoProducts are seeded at start-up (kept when they already exist).
// Prices are in cents; new users have 10000 (100.00) of credit.
var DemoProducts = []Product{
	{SKU: "TEA-1", Name: "Green tea", Price: 450, Stock: 1000},
	{SKU: "MUG-1", Name: "Mug", Price: 1200, Stock: 500},
	{SKU: "LAMP-1", Name: "Desk lamp", Price: 6000, Stock: 50},
	{SKU: "POSTER-1", Name: "Signed poster (limited edition)", Price: 2500, Stock: 3},
}

func (s *Shop) seed(ctx context.Context) error {
	c := s.Client()
	for _, p := range DemoProducts {
		if err := c.AddProduct(ctx, s.Admin.Token, p); err != nil && StatusOf(err) != 409 { // 409: seeded by an earlier run
			return fmt.Errorf("shop: seed %s: %w", p.SKU, err)
		}
	}
	return nil
}

// ScenarioResult is what the scenario did, for tests to check.
type ScenarioResult struct {
	Customer                    Session
	StartCredit                 int64
	Approved, NoCredit, NoStock Order
}

// PlayScenario plays the demo's three orders as a new customer, writing what
// happens to w: one approved, one cancelled for lack of credit, one for lack
// of stock, each with its saga's timeline.
func (c *Client) PlayScenario(ctx context.Context, w io.Writer) (*ScenarioResult, error) {
	r := &ScenarioResult{}
	email := "ann-" + randomHex(3) + "@example.com"
	fmt.Fprintf(w, "\n▶ Scenario\n\n1. Ann signs up (%s) and logs in.\n", email)
	var err error
	if r.Customer, err = c.Customer(ctx, email, "Ann"); err != nil {
		return r, err
	}
	if r.StartCredit, err = c.Credit(ctx, r.Customer); err != nil {
		return r, err
	}
	fmt.Fprintf(w, "   She has %s of credit.\n", money(r.StartCredit))

	poster, err := c.Product(ctx, "POSTER-1")
	if err != nil {
		return r, err
	}
	steps := []struct {
		what  string
		lines []Line
		into  *Order
	}{
		{"2. Ann orders 2 green teas and a mug (%s): affordable and in stock.", []Line{{"TEA-1", 2}, {"MUG-1", 1}}, &r.Approved},
		{"3. Ann orders 2 desk lamps (%s): more than her credit.", []Line{{"LAMP-1", 2}}, &r.NoCredit},
		{"4. Ann orders " + fmt.Sprint(poster.Stock+1) + " signed posters (%s): only " + fmt.Sprint(poster.Stock) + " are left.",
			[]Line{{"POSTER-1", poster.Stock + 1}}, &r.NoStock},
	}
	prices := map[string]int64{}
	for _, p := range DemoProducts {
		prices[p.SKU] = p.Price
	}
	for _, st := range steps {
		var total int64
		for _, l := range st.lines {
			total += prices[l.SKU] * int64(l.Quantity)
		}
		fmt.Fprintf(w, "\n"+st.what+"\n", money(total))
		placed := time.Now()
		id, err := c.PlaceOrder(ctx, r.Customer.Token, st.lines...)
		if err != nil {
			return r, err
		}
		fmt.Fprintf(w, "   POST /orders → 202 PENDING, order %s\n", id)
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		o, err := c.AwaitDecided(wctx, r.Customer.Token, id, 50*time.Millisecond)
		cancel()
		if err != nil {
			return r, err
		}
		*st.into = o
		WriteTimeline(w, o, time.Since(placed))
	}
	credit, err := c.Credit(ctx, r.Customer)
	if err != nil {
		return r, err
	}
	fmt.Fprintf(w, "\nAnn's credit: %s → %s (only the approved order was charged).\n", money(r.StartCredit), money(credit))
	return r, nil
}

// WriteTimeline writes the order's outcome and its saga's steps.
func WriteTimeline(w io.Writer, o Order, took time.Duration) {
	outcome := o.Status
	if o.Reason != "" {
		outcome += ": " + o.Reason
	}
	fmt.Fprintf(w, "   → %s after %s (saga %s)\n", outcome, took.Round(time.Millisecond), o.Saga.Status)
	start := o.CreatedAt
	for _, a := range o.Saga.History {
		step := a.Step
		if a.Compensation {
			step = "undo " + step
		}
		line := fmt.Sprintf("     %s  +%-6s %-20s attempt %d  %s", a.StartedAt.Local().Format("15:04:05.000"),
			a.StartedAt.Sub(start).Round(time.Millisecond), step, a.Attempt, a.Outcome)
		if a.Error != "" {
			line += " (" + a.Error + ")"
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
}

func money(cents int64) string { return fmt.Sprintf("%d.%02d", cents/100, cents%100) }

// LeaveOneFailed places one more order for the customer while the payment
// processor is down, on purpose: the debit (the saga's pivot) answers with
// an error on every attempt; once the step's attempts are spent the saga
// does not compensate a pivot (an operator decides whether to try again or
// to give up) but ends failed, the order PENDING with its stock reserved. The processor comes back once the saga has failed, and w gets
// how to finish the order from the console and from the CLI.
func (s *Shop) LeaveOneFailed(ctx context.Context, w io.Writer, customer Session) (Order, error) {
	c := s.Client()
	fmt.Fprintf(w, "\n5. The payment processor goes down; Ann orders a mug (%s) meanwhile.\n", money(1200))
	s.SetPaymentsDown(true)
	defer s.SetPaymentsDown(false)
	placed := time.Now()
	id, err := c.PlaceOrder(ctx, customer.Token, Line{"MUG-1", 1})
	if err != nil {
		return Order{}, err
	}
	fmt.Fprintf(w, "   POST /orders → 202 PENDING, order %s\n", id)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var o Order
	for {
		if o, err = c.Order(wctx, customer.Token, id); err != nil {
			return o, err
		}
		if o.Saga != nil && o.Saga.Status == "failed" {
			break
		}
		select {
		case <-wctx.Done():
			return o, fmt.Errorf("shop: order %s: the saga did not end failed: %w", id, wctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	WriteTimeline(w, o, time.Since(placed))
	s.SetPaymentsDown(false)
	fmt.Fprintf(w, `
   The debit is the saga's pivot: its participant answered an error on every
   attempt, so the saga did not undo the reservation on its own: it is
   FAILED, waiting for an operator, with the order PENDING and one mug
   reserved. The payment processor is back now.

   Fix it from the console: open %[1]ssagas?failed=1, open the saga, press
   Retry and confirm. Or from the CLI:

     go run ./cmd/sagabox -database-url '%[2]s' saga list -failed
     go run ./cmd/sagabox -database-url '%[2]s' saga retry %[3]s -reason "payments are back"

   The order service's orchestrator carries the retry out within a poll
   interval (it needs the shop running: -stay, or run the shop again), the
   debit goes through and the order is APPROVED.
`, s.ConsoleURL, s.OrdersDatabaseURL, o.Saga.ID)
	return o, nil
}
