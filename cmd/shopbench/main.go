// Command shopbench measures the whole shop as its users see it: it starts
// the shop in-process (examples/shop/shop: three services, kfake, srfake)
// on random ports against fresh databases, which it drops at the end,
// creates -users customers and a few products, and has -concurrency
// customers at a time place an order and poll it until the saga has decided
// it, for -duration. It prints
//
//	system=shop orders_per_sec=<n> p50_ms=<x> p99_ms=<y>
//
// where orders_per_sec counts orders decided (approved or cancelled) per
// second and the percentiles are from POST /orders to the poll that saw the
// final status (so they include up to -poll of polling delay).
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
	flag.Parse()
	if cfg.users <= 0 || cfg.concurrency <= 0 || cfg.duration <= 0 || cfg.poll <= 0 || cfg.partitions <= 0 {
		fmt.Fprintln(os.Stderr, "shopbench: -users, -concurrency, -duration, -poll and -partitions must be positive")
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
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
