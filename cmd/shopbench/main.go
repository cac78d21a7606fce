// Command shopbench measures the whole shop as its users see it: it starts
// the shop in-process (examples/shop/shop: three services, kfake, srfake)
// on random ports against fresh databases, which it drops at the end,
// creates -users customers and a few products, and places orders in one of
// three modes:
//
//   - -search (what `make bench-shop` runs): a capacity search. Open-loop
//     runs of -step each, at rates doubling from -start-rate until one
//     fails (p99 from POST /orders to the final status over -max-p99, or
//     more than 1 % of orders failing or not decided), then a bisection
//     between the last rate that held and the first that did not. It prints
//     one "# step" line per run and, for the highest rate that held,
//
//     system=shop orders_per_sec=<n> p50_ms=<x> p99_ms=<y>
//
//   - -rate R: open loop at R orders a second for -duration, whatever the
//     shop's answers (a customer does not wait for the previous customer):
//     each order's latency counts from the moment it was due, so a shop
//     falling behind shows it (no coordinated omission). Each order is
//     POSTed with `Prefer: wait=30` and, if still PENDING, long-polled
//     (`GET /orders/{id}?wait=30&status=PENDING`): no polling delay.
//
//   - neither: the closed loop of old, -concurrency customers each placing
//     an order and polling it every -poll until decided.
//
// orders_per_sec counts orders decided (approved or cancelled) per second.
//
// The orders mix the three outcomes: most buy a cheap product with a
// plentiful stock (approved until the customer's credit runs out), some a
// product dearer than any credit (cancelled: insufficient credit, stock
// given back), some a product with little stock (approved, then cancelled:
// insufficient stock).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/sagabox/sagabox/examples/shop/shop"
	useradapters "github.com/sagabox/sagabox/userservice/adapters"
)

type config struct {
	databaseURL string
	users       int
	concurrency int
	duration    time.Duration
	poll        time.Duration
	partitions  int
	verbose     bool

	rate      float64       // open loop, orders a second
	search    bool          // capacity search
	startRate float64       // first rate of the search
	step      time.Duration // length of one search run
	maxP99    time.Duration // the search's latency bound
	inflight  int           // open loop: most orders in flight; beyond, an order fails
}

func main() {
	cfg := config{}
	def := os.Getenv("DATABASE_URL")
	if def == "" {
		def = shop.DefaultDatabaseURL
	}
	flag.StringVar(&cfg.databaseURL, "database-url", def, "Postgres server to run on (DATABASE_URL); fresh databases are created there and dropped at the end")
	flag.IntVar(&cfg.users, "users", 40, "customers to create (logins beyond 50 wait for userservice's per-address rate limit)")
	flag.IntVar(&cfg.concurrency, "concurrency", 8, "customers placing orders at the same time")
	flag.DurationVar(&cfg.duration, "duration", 20*time.Second, "how long orders are placed")
	flag.DurationVar(&cfg.poll, "poll", 50*time.Millisecond, "how often an order is polled for its final status (polling is load too: concurrency/poll GETs a second)")
	flag.IntVar(&cfg.partitions, "partitions", shop.DefaultPartitions, "partitions per topic")
	flag.BoolVar(&cfg.verbose, "v", false, "print the services' warnings and errors")
	flag.Float64Var(&cfg.rate, "rate", 0, "open loop: orders a second, placed on schedule whatever the answers (0: closed loop)")
	flag.BoolVar(&cfg.search, "search", false, "capacity search: the highest open-loop rate whose p99 stays under -max-p99")
	flag.Float64Var(&cfg.startRate, "start-rate", 50, "capacity search: the first rate tried")
	flag.DurationVar(&cfg.step, "step", 10*time.Second, "capacity search: how long each rate runs")
	flag.DurationVar(&cfg.maxP99, "max-p99", 500*time.Millisecond, "capacity search: the p99 bound, POST to final status")
	flag.IntVar(&cfg.inflight, "max-inflight", 5000, "open loop: most orders in flight at once; one more counts as failed")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (the three services, kfake and srfake are in this process) to this file")
	flag.Parse()
	if cfg.users <= 0 || cfg.concurrency <= 0 || cfg.duration <= 0 || cfg.poll <= 0 || cfg.partitions <= 0 ||
		cfg.rate < 0 || cfg.startRate <= 0 || cfg.step <= 0 || cfg.maxP99 <= 0 || cfg.inflight <= 0 {
		fmt.Fprintln(os.Stderr, "shopbench: -users, -concurrency, -duration, -poll, -partitions, -start-rate, -step, -max-p99 and -max-inflight must be positive, -rate not negative")
		os.Exit(2)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "shopbench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "shopbench:", err)
			os.Exit(1)
		}
	}
	err := run(cfg)
	pprof.StopCPUProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "shopbench:", err)
		os.Exit(1)
	}
}

// The products of the mix. Customers start with 10000 cents of credit.
// The cheap orders are spread over several products: one product's stock
// row is one lock, which every reservation of it waits for.
var (
	cheap = []shop.Product{
		{SKU: "BENCH-CHEAP-1", Name: "Sticker 1", Price: 10, Stock: 1_000_000},
		{SKU: "BENCH-CHEAP-2", Name: "Sticker 2", Price: 10, Stock: 1_000_000},
		{SKU: "BENCH-CHEAP-3", Name: "Sticker 3", Price: 10, Stock: 1_000_000},
		{SKU: "BENCH-CHEAP-4", Name: "Sticker 4", Price: 10, Stock: 1_000_000},
		{SKU: "BENCH-CHEAP-5", Name: "Sticker 5", Price: 10, Stock: 1_000_000},
		{SKU: "BENCH-CHEAP-6", Name: "Sticker 6", Price: 10, Stock: 1_000_000},
		{SKU: "BENCH-CHEAP-7", Name: "Sticker 7", Price: 10, Stock: 1_000_000},
		{SKU: "BENCH-CHEAP-8", Name: "Sticker 8", Price: 10, Stock: 1_000_000},
	}
	dear   = shop.Product{SKU: "BENCH-DEAR", Name: "Sofa", Price: 20_000, Stock: 1_000_000}
	scarce = shop.Product{SKU: "BENCH-SCARCE", Name: "Signed print", Price: 50, Stock: 20}
)

// outcome of one order.
type outcome struct {
	status, reason string
	latency        time.Duration
	err            error
}

func run(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.DiscardHandler)
	if cfg.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s, err := shop.Start(ctx, shop.Config{DatabaseURL: cfg.databaseURL, Fresh: true, Logger: logger, Partitions: cfg.partitions,
		// The open loop keeps many orders of one customer in flight; the
		// cap of pending orders is a defence against one abusive account,
		// not what is measured.
		MaxPendingOrders: 1_000_000,
		// Password hashing is not what is measured; only sign-up and login use it.
		PasswordParams: useradapters.Argon2idParams{Memory: 64, Time: 1, Threads: 1}})
	if err != nil {
		return err
	}
	err = bench(ctx, cfg, s)
	return errors.Join(err, s.Close())
}

func bench(ctx context.Context, cfg config, s *shop.Shop) error {
	c := s.Client()
	c.HTTP = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2 * cfg.concurrency}}
	for _, p := range append([]shop.Product{dear, scarce}, cheap...) {
		if err := c.AddProduct(ctx, s.Admin.Token, p); err != nil {
			return err
		}
	}
	users := make([]shop.Session, cfg.users)
	for i := range users {
		var err error
		if users[i], err = c.Customer(ctx, fmt.Sprintf("bench-%d@example.com", i), "Bench"); err != nil {
			return fmt.Errorf("customer %d: %w", i, err)
		}
	}
	// One order first: consumer groups join, schemas are registered.
	if _, err := order(ctx, c, users[0], cheap[0].SKU, cfg.poll); err != nil {
		return fmt.Errorf("warm-up order: %w", err)
	}
	switch {
	case cfg.search:
		return search(ctx, cfg, c, users)
	case cfg.rate > 0:
		fmt.Printf("# shopbench open loop rate=%.1f users=%d duration=%s partitions=%d\n", cfg.rate, len(users), cfg.duration, cfg.partitions)
		r := openLoop(ctx, cfg, c, users, cfg.rate, cfg.duration)
		r.print("# ")
		fmt.Printf("system=shop orders_per_sec=%.1f p50_ms=%.1f p99_ms=%.1f\n", r.perSec, r.p50, r.p99)
		return nil
	}

	fmt.Printf("# shopbench users=%d concurrency=%d duration=%s poll=%s partitions=%d\n",
		cfg.users, cfg.concurrency, cfg.duration, cfg.poll, cfg.partitions)
	start := time.Now()
	deadline := start.Add(cfg.duration)
	results := make(chan outcome, 1024)
	var wg sync.WaitGroup
	for w := range cfg.concurrency {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 42))
			for time.Now().Before(deadline) && ctx.Err() == nil {
				sku := cheap[rnd.IntN(len(cheap))].SKU
				switch n := rnd.IntN(100); {
				case n < 15:
					sku = dear.SKU
				case n < 30:
					sku = scarce.SKU
				}
				results <- must(order(ctx, c, users[rnd.IntN(len(users))], sku, cfg.poll))
			}
		})
	}
	go func() { wg.Wait(); close(results) }()

	var (
		latencies []time.Duration
		counts    = map[string]int{}
		firstErr  error
	)
	for r := range results {
		if r.err != nil {
			counts["errors"]++
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		key := r.status
		if r.reason != "" {
			key += " (" + r.reason + ")"
		}
		counts[key]++
		latencies = append(latencies, r.latency)
	}
	elapsed := time.Since(start)
	if len(latencies) == 0 {
		return fmt.Errorf("no order was decided: %w", firstErr)
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	fmt.Printf("# decided=%d approved=%d cancelled_insufficient_credit=%d cancelled_insufficient_stock=%d errors=%d elapsed=%s\n",
		len(latencies), counts["APPROVED"], counts["CANCELLED (insufficient credit)"], counts["CANCELLED (insufficient stock)"],
		counts["errors"], elapsed.Round(time.Millisecond))
	for k, n := range counts {
		switch k {
		case "APPROVED", "CANCELLED (insufficient credit)", "CANCELLED (insufficient stock)", "errors":
		default:
			fmt.Printf("# other outcome %s: %d\n", k, n)
		}
	}
	if firstErr != nil {
		fmt.Printf("# first error: %v\n", firstErr)
	}
	fmt.Printf("system=shop orders_per_sec=%.1f p50_ms=%.1f p99_ms=%.1f\n",
		float64(len(latencies))/elapsed.Seconds(), pct(0.50), pct(0.99))
	return nil
}

// order places one order of one unit of sku and polls it until decided.
func order(ctx context.Context, c *shop.Client, u shop.Session, sku string, poll time.Duration) (outcome, error) {
	t0 := time.Now()
	id, err := c.PlaceOrder(ctx, u.Token, shop.Line{SKU: sku, Quantity: 1})
	if err != nil {
		return outcome{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	o, err := c.AwaitDecided(wctx, u.Token, id, poll)
	if err != nil {
		return outcome{}, err
	}
	return outcome{status: o.Status, reason: o.Reason, latency: time.Since(t0)}, nil
}

func must(o outcome, err error) outcome {
	o.err = err
	return o
}

// pick is the order mix: mostly cheap (approved), 15 % dear (cancelled:
// insufficient credit), 15 % scarce (approved, then cancelled: insufficient
// stock).
func pick(rnd *rand.Rand) string {
	switch n := rnd.IntN(100); {
	case n < 15:
		return dear.SKU
	case n < 30:
		return scarce.SKU
	}
	return cheap[rnd.IntN(len(cheap))].SKU
}

// result of one open-loop run.
type result struct {
	rate         float64 // asked
	due, decided int
	failed       int // errors, refusals, not decided within the minute
	perSec       float64
	p50, p99     float64 // ms, from due to the final status
	firstErr     error
	elapsed      time.Duration
	approved     int
}

func (r result) print(prefix string) {
	fmt.Printf("%srate=%.1f due=%d decided=%d failed=%d approved=%d orders_per_sec=%.1f p50_ms=%.1f p99_ms=%.1f elapsed=%s\n",
		prefix, r.rate, r.due, r.decided, r.failed, r.approved, r.perSec, r.p50, r.p99, r.elapsed.Round(time.Millisecond))
	if r.firstErr != nil {
		fmt.Printf("%s  first error: %v\n", prefix, r.firstErr)
	}
}

// ok is the search's criterion.
func (r result) ok(maxP99 time.Duration) bool {
	return r.decided > 0 && float64(r.failed) <= 0.01*float64(r.due) && r.p99 <= float64(maxP99.Microseconds())/1000
}

// openLoop places orders at rate a second for d, each on its own goroutine
// at the moment it is due, and waits for every one to be decided (or to
// fail). Latency counts from the moment the order was due.
func openLoop(ctx context.Context, cfg config, c *shop.Client, users []shop.Session, rate float64, d time.Duration) result {
	type sample struct {
		latency time.Duration
		status  string
		err     error
	}
	n := int(rate * d.Seconds())
	samples := make(chan sample, n)
	slots := make(chan struct{}, cfg.inflight)
	rnd := rand.New(rand.NewPCG(uint64(rate), 42))
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			n = i
			break
		}
		u, sku := users[rnd.IntN(len(users))], pick(rnd)
		select {
		case slots <- struct{}{}:
		default:
			samples <- sample{err: fmt.Errorf("more than %d orders in flight", cfg.inflight)}
			continue
		}
		wg.Go(func() {
			defer func() { <-slots }()
			octx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			o, err := c.PlaceOrderWait(octx, u.Token, httpx30, shop.Line{SKU: sku, Quantity: 1})
			for err == nil && o.Status == "PENDING" && octx.Err() == nil {
				o, err = c.AwaitChange(octx, u.Token, o.OrderID, "PENDING", httpx30)
			}
			if err == nil && o.Status == "PENDING" {
				err = fmt.Errorf("order %s not decided within a minute", o.OrderID)
			}
			samples <- sample{latency: time.Since(due), status: o.Status, err: err}
		})
	}
	wg.Wait()
	close(samples)
	r := result{rate: rate, due: n, elapsed: time.Since(start)}
	var lat []time.Duration
	for s := range samples {
		if s.err != nil {
			r.failed++
			if r.firstErr == nil {
				r.firstErr = s.err
			}
			continue
		}
		r.decided++
		if s.status == "APPROVED" {
			r.approved++
		}
		lat = append(lat, s.latency)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
		r.p50, r.p99 = pct(0.50), pct(0.99)
	}
	r.perSec = float64(r.decided) / r.elapsed.Seconds()
	return r
}

// httpx30 is the longest wait the order API grants (httpx.MaxWait).
const httpx30 = 30 * time.Second

// search finds the highest open-loop rate that holds (result.ok): doubling
// from -start-rate, then bisecting between the last rate that held and the
// first that did not, to within 10 %.
func search(ctx context.Context, cfg config, c *shop.Client, users []shop.Session) error {
	fmt.Printf("# shopbench capacity search users=%d step=%s max_p99=%s start_rate=%.0f partitions=%d\n",
		len(users), cfg.step, cfg.maxP99, cfg.startRate, cfg.partitions)
	run := func(rate float64) result {
		r := openLoop(ctx, cfg, c, users, rate, cfg.step)
		verdict := "holds"
		if !r.ok(cfg.maxP99) {
			verdict = "fails"
		}
		r.print("# step " + verdict + " ")
		return r
	}
	var best *result
	lo, hi := 0.0, 0.0
	for rate := cfg.startRate; ctx.Err() == nil; rate *= 2 {
		r := run(rate)
		if !r.ok(cfg.maxP99) {
			hi = rate
			break
		}
		best, lo = &r, rate
		if rate > 100_000 {
			break
		}
	}
	for hi > 0 && lo > 0 && hi-lo > 0.1*lo && ctx.Err() == nil {
		mid := (lo + hi) / 2
		if r := run(mid); r.ok(cfg.maxP99) {
			best, lo = &r, mid
		} else {
			hi = mid
		}
	}
	if best == nil {
		return fmt.Errorf("not even %.0f orders a second held a p99 under %s: lower -start-rate", cfg.startRate, cfg.maxP99)
	}
	fmt.Printf("# capacity: %.1f orders a second asked, the highest that held\n", best.rate)
	fmt.Printf("system=shop orders_per_sec=%.1f p50_ms=%.1f p99_ms=%.1f\n", best.perSec, best.p50, best.p99)
	return nil
}
