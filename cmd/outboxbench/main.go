// Command outboxbench compares three ways of getting messages committed in
// Postgres onto Kafka, in one process run, on the same Postgres server and
// the same in-process Kafka broker (kfake) and Schema Registry (srfake):
//
//   - sagabox: this module's relay (outbox.NewRelay);
//   - watermill-forwarder: watermill's components/forwarder, reading
//     watermill-sql and publishing with watermill-kafka, default wiring;
//   - ceiling: a minimal loop (select 1,000 rows, one produce request,
//     delete, commit), the upper bound.
//
// It measures backlog throughput, the cost of the outbox write in a business
// transaction (with and without NOTIFY), and commit-to-readable latency at a
// steady rate. It creates a fresh database and drops it at the end. Run it
// with `make bench`; BENCHMARKS.md has the results.
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox/outbox"
)

type config struct {
	databaseURL string
	messages    int
	duration    time.Duration
	rate        int
	writers     int
	partitions  int
	maxWait     time.Duration
	phases      string
	systems     string
	verbose     bool
	cpuProfile  string
	repeat      int
}

func main() {
	var cfg config
	flag.StringVar(&cfg.databaseURL, "database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
		"Postgres server to benchmark on; a fresh database is created there and dropped at the end")
	flag.IntVar(&cfg.messages, "messages", 50000, "backlog per system in the throughput phase")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "length of the write-path phase and of the latency phase, per system")
	flag.IntVar(&cfg.rate, "rate", 1000, "messages per second in the latency phase")
	flag.IntVar(&cfg.writers, "writers", 8, "concurrent writers in the write-path phase")
	flag.IntVar(&cfg.partitions, "partitions", 8, "partitions per topic")
	flag.DurationVar(&cfg.maxWait, "max-wait", 3*time.Minute, "how long a system may take to deliver its backlog before its rate is taken from what it delivered")
	flag.StringVar(&cfg.phases, "phases", "throughput,write,latency", "phases to run, comma-separated")
	flag.StringVar(&cfg.systems, "systems", "sagabox,watermill-forwarder,ceiling", "systems to run, comma-separated")
	flag.BoolVar(&cfg.verbose, "v", false, "print the worst latency of every second of the latency phase")
	flag.IntVar(&cfg.repeat, "repeat", 3, "throughput runs per system (the median is printed)")
	flag.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "outboxbench:", err)
			os.Exit(1)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "outboxbench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

type env struct {
	cfg      config
	pool     *pgxpool.Pool
	sqlDB    *sql.DB
	brokers  []string
	systems  []system
	sagabox  *sagaboxSystem
	registry string
}

func run(ctx context.Context, cfg config) error {
	dbURL, drop, err := createDatabase(ctx, cfg.databaseURL)
	if err != nil {
		return err
	}
	defer drop()

	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return err
	}
	pcfg.MaxConns = int32(cfg.writers + 4)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	sqlDB, err := sql.Open("pgx", dbURL)
	if err != nil {
		return err
	}
	defer sqlDB.Close()
	sqlDB.SetMaxOpenConns(cfg.writers + 4)
	sqlDB.SetMaxIdleConns(cfg.writers + 4)

	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(cfg.partitions))
	if err != nil {
		return fmt.Errorf("kfake: %w", err)
	}
	defer cluster.Close()
	reg := srfake.New()
	defer reg.Close()

	if _, err := pool.Exec(ctx, `
CREATE TABLE bench_orders (
	id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	order_id     text   NOT NULL,
	customer_id  text   NOT NULL,
	amount_cents bigint NOT NULL,
	created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE bench_order_lines (
	id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	order_id    text   NOT NULL,
	sku         text   NOT NULL,
	quantity    int    NOT NULL,
	price_cents bigint NOT NULL
);
CREATE TABLE bench_products (sku text PRIMARY KEY, stock bigint NOT NULL);
INSERT INTO bench_products SELECT format('SKU-%s', lpad(i::text, 7, '0')), 1000000000 FROM generate_series(0, 9999) i`); err != nil {
		return err
	}
	// The forwarder and the ceiling frame values with a registered ID too,
	// so every system puts the same bytes on Kafka.
	created, err := srclient.NewSchemaRegistryClient(reg.URL()).CreateSchema("outboxbench-value", eventSchema, srclient.Avro)
	if err != nil {
		return fmt.Errorf("register schema: %w", err)
	}

	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e := &env{cfg: cfg, pool: pool, sqlDB: sqlDB, brokers: cluster.ListenAddrs(), registry: reg.URL()}
	e.sagabox, err = newSagabox(ctx, pool, e.brokers, reg.URL(), quiet)
	if err != nil {
		return fmt.Errorf("sagabox: %w", err)
	}
	// watermill logs context cancellations as errors at every shutdown: keep it quiet.
	fwd, err := newForwarder(ctx, sqlDB, e.brokers, created.ID(), watermill.NopLogger{})
	if err != nil {
		return err
	}
	ceil, err := newCeiling(ctx, pool, e.brokers, created.ID())
	if err != nil {
		return err
	}
	for _, s := range []system{e.sagabox, fwd, ceil} {
		if slices.Contains(strings.Split(cfg.systems, ","), s.name()) {
			e.systems = append(e.systems, s)
		}
	}

	v, _ := framed(fwd.schema, 1, event(1))
	fmt.Printf("# outboxbench: %d-byte Avro values (%d framed), %d partitions, GOMAXPROCS=%d, %s\n",
		len(v)-5, len(v), cfg.partitions, runtime.GOMAXPROCS(0), runtime.Version())

	for _, phase := range strings.Split(cfg.phases, ",") {
		// Every phase starts from empty outbox tables: rows left by an
		// earlier phase (published ones, or the write phase's, which no relay
		// reads) would weigh on the next.
		for _, s := range e.systems {
			for _, t := range append(s.tables(), "bench_orders", "bench_order_lines") {
				if _, err := pool.Exec(ctx, "TRUNCATE "+t); err != nil {
					return fmt.Errorf("truncate %s: %w", t, err)
				}
			}
		}
		var err error
		switch strings.TrimSpace(phase) {
		case "throughput":
			err = e.throughput(ctx)
		case "write":
			err = e.writePath(ctx)
		case "latency":
			err = e.latency(ctx)
		default:
			err = fmt.Errorf("unknown phase %q", phase)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// createDatabase creates a fresh database on the server of serverURL and
// returns its URL and a function that drops it.
func createDatabase(ctx context.Context, serverURL string) (string, func(), error) {
	admin, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return "", nil, fmt.Errorf("connect to %s: %w", serverURL, err)
	}
	defer admin.Close(ctx)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "outboxbench_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("create database: %w", err)
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return "", nil, err
	}
	u.Path = "/" + name
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, serverURL)
		if err != nil {
			fmt.Fprintf(os.Stderr, "outboxbench: drop %s: %v\n", name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			fmt.Fprintf(os.Stderr, "outboxbench: drop %s: %v\n", name, err)
		}
	}
	return u.String(), drop, nil
}

// createTopic creates topic with the cluster's partition count, so that no
// system pays for auto-creation inside its measurement.
func (e *env) createTopic(ctx context.Context, topic string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	t := kmsg.NewCreateTopicsRequestTopic()
	t.Topic = topic
	t.NumPartitions = int32(e.cfg.partitions)
	t.ReplicationFactor = 1
	req.Topics = append(req.Topics, t)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if len(resp.Topics) == 1 && resp.Topics[0].ErrorCode != 0 && resp.Topics[0].ErrorCode != 36 { // 36: already exists
		return fmt.Errorf("create topic %s: error code %d", topic, resp.Topics[0].ErrorCode)
	}
	return nil
}

// receiver consumes a topic from the start and records when each sequence
// number first became readable.
type receiver struct {
	mu       sync.Mutex
	at       []int64 // unix nanos, by seq; 0 = not yet
	unique   atomic.Int64
	dups     atomic.Int64
	allSeen  chan struct{}
	closeAll sync.Once
	cancel   context.CancelFunc
	done     chan struct{}
}

func (e *env) receive(ctx context.Context, topic string, n int) (*receiver, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(e.brokers...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(time.Second),
	)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &receiver{at: make([]int64, n), allSeen: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer cl.Close()
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			now := time.Now().UnixNano()
			fs.EachRecord(func(rec *kgo.Record) {
				seq := int64(-1)
				for _, h := range rec.Headers {
					if h.Key == seqHeader {
						seq, _ = strconv.ParseInt(string(h.Value), 10, 64)
					}
				}
				if seq < 0 || seq >= int64(n) {
					return
				}
				r.mu.Lock()
				first := r.at[seq] == 0
				if first {
					r.at[seq] = now
				}
				r.mu.Unlock()
				if !first {
					r.dups.Add(1)
					return
				}
				if r.unique.Add(1) == int64(n) {
					r.closeAll.Do(func() { close(r.allSeen) })
				}
			})
		}
	}()
	return r, nil
}

func (r *receiver) stop() {
	r.cancel()
	<-r.done
}

// span is when the first and the last of the received messages became
// readable.
func (r *receiver) span() (first, last time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	lo, hi := int64(0), int64(0)
	for _, at := range r.at {
		if at != 0 && (lo == 0 || at < lo) {
			lo = at
		}
		hi = max(hi, at)
	}
	return time.Unix(0, lo), time.Unix(0, hi)
}

// --- phase 1: throughput -----------------------------------------------------

// throughput fills each system's table with the same backlog, then times how
// long the system takes to make all of it readable on Kafka. The systems take
// turns, cfg.repeat times, and the median run counts: other load on the
// machine then falls on all of them alike.
func (e *env) throughput(ctx context.Context) error {
	rates := map[string][]float64{}
	for rep := range e.cfg.repeat {
		for _, s := range e.systems {
			rate, err := e.throughputRun(ctx, s, fmt.Sprintf("tp-%s-%d", s.name(), rep))
			if err != nil {
				return fmt.Errorf("%s: %w", s.name(), err)
			}
			rates[s.name()] = append(rates[s.name()], rate)
		}
	}
	for _, s := range e.systems {
		r := rates[s.name()]
		slices.Sort(r)
		fmt.Printf("system=%s msgs_per_sec=%.0f\n", s.name(), r[len(r)/2])
	}
	return nil
}

func (e *env) throughputRun(ctx context.Context, s system, topic string) (float64, error) {
	n := e.cfg.messages
	if err := e.createTopic(ctx, topic); err != nil {
		return 0, err
	}
	for _, t := range s.tables() {
		if _, err := e.pool.Exec(ctx, "TRUNCATE "+t); err != nil {
			return 0, fmt.Errorf("truncate %s: %w", t, err)
		}
	}
	fillStart := time.Now()
	if err := e.fill(ctx, s, topic, n); err != nil {
		return 0, fmt.Errorf("fill: %w", err)
	}
	fill := time.Since(fillStart)
	for _, t := range s.tables() {
		if _, err := e.pool.Exec(ctx, "VACUUM ANALYZE "+t); err != nil {
			return 0, fmt.Errorf("vacuum %s: %w", t, err)
		}
	}
	r, err := e.receive(ctx, topic, n)
	if err != nil {
		return 0, err
	}
	defer r.stop()
	start := time.Now()
	stop, err := s.start(ctx)
	if err != nil {
		return 0, fmt.Errorf("start: %w", err)
	}
	timedOut := false
	select {
	case <-r.allSeen:
	case <-time.After(e.cfg.maxWait):
		timedOut = true
	case <-ctx.Done():
		stop()
		return 0, ctx.Err()
	}
	first, end := r.span()
	stop()
	got := r.unique.Load()
	elapsed := end.Sub(start)
	if timedOut {
		fmt.Printf("# %s: only %d of %d messages readable after %s\n", s.name(), got, n, e.cfg.maxWait)
	}
	rate := float64(got) / elapsed.Seconds()
	fmt.Printf("# %s: %.0f msgs/s: %d messages in %s, the first after %s (%.0f msgs/s from first to last); backlog written in %s; %d duplicates\n",
		s.name(), rate, got, elapsed.Round(time.Millisecond), first.Sub(start).Round(time.Millisecond),
		float64(got-1)/end.Sub(first).Seconds(), fill.Round(time.Millisecond), r.dups.Load())
	return rate, nil
}

// fill writes n messages in transactions of 500, four at a time.
func (e *env) fill(ctx context.Context, s system, topic string, n int) error {
	const per = 500
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				from := next.Add(per) - per
				if from >= int64(n) {
					return
				}
				seqs := make([]int64, 0, per)
				for seq := from; seq < min(from+per, int64(n)); seq++ {
					seqs = append(seqs, seq)
				}
				if err := s.write(ctx, topic, seqs, false); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// --- phase 2: write path -----------------------------------------------------

// writePath measures the business transaction alone, with the outbox write
// (waking the relay in-process), with the outbox write plus pg_notify, and
// with the outbox write waking nothing (the relay then polls).
// The variants take turns in short rounds, so that load from elsewhere on the
// machine falls on all of them alike. No relay runs: this is the cost in the
// writers' transactions.
func (e *env) writePath(ctx context.Context) error {
	codec := outbox.MustCodec(eventSchema)
	idle, err := outbox.NewRelay(outbox.RelayConfig{Pool: e.pool, Brokers: e.brokers,
		Registry: srclient.NewSchemaRegistryClient(e.registry)})
	if err != nil {
		return err
	}
	inProcess, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec, Notify: idle.Notify})
	if err != nil {
		return err
	}
	notifying, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec, NotifyChannel: "outboxbench"})
	if err != nil {
		return err
	}
	silent, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec})
	if err != nil {
		return err
	}
	for _, w := range []*outbox.Writer{inProcess, notifying, silent} {
		if err := w.StoreSchemas(ctx, e.pool); err != nil {
			return err
		}
	}
	tx := func(w *outbox.Writer, shop bool) func(ctx context.Context, seq int64) error {
		return func(ctx context.Context, seq int64) error {
			return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
				if err := businessInsert(ctx, pgxExec(tx), seq); err != nil {
					return err
				}
				if shop {
					if err := shopChanges(ctx, tx, seq); err != nil {
						return err
					}
				}
				if w == nil {
					return nil
				}
				return w.Write(ctx, tx, sagaboxMessages("write-path", []int64{seq})...)
			})
		}
	}
	// queued sends the business insert and the outbox write in one round
	// trip with Writer.Queue, as a repository that batches its statements
	// would.
	queued := func(w *outbox.Writer) func(ctx context.Context, seq int64) error {
		return func(ctx context.Context, seq int64) error {
			return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
				ev := event(seq)
				b := &pgx.Batch{}
				b.Queue(businessSQL, ev.OrderID, ev.CustomerID, ev.AmountCents)
				if err := w.Queue(ctx, b, sagaboxMessages("write-path", []int64{seq})...); err != nil {
					return err
				}
				return tx.SendBatch(ctx, b).Close()
			})
		}
	}
	variants := []struct {
		name string
		do   func(ctx context.Context, seq int64) error
		txs  int64
		took time.Duration
	}{
		{name: "write-baseline", do: tx(nil, false)},
		{name: "write-outbox", do: tx(inProcess, false)},
		{name: "write-outbox-notify", do: tx(notifying, false)},
		{name: "write-outbox-nowake", do: tx(silent, false)},
		{name: "write-outbox-queued", do: queued(inProcess)},
		// The same with a fuller business transaction (order lines, stock),
		// for context: the outbox row costs the same, the ratio moves.
		{name: "write-baseline-shop", do: tx(nil, true)},
		{name: "write-outbox-shop", do: tx(inProcess, true)},
	}
	const rounds = 5
	slice := e.cfg.duration / rounds
	var seq atomic.Int64
	for range rounds {
		for i := range variants {
			v := &variants[i]
			n, took, err := e.closedLoop(ctx, slice, func(ctx context.Context) error { return v.do(ctx, seq.Add(1)) })
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			v.txs += n
			v.took += took
		}
	}
	var base float64
	for _, v := range variants {
		rate := float64(v.txs) / v.took.Seconds()
		if strings.HasPrefix(v.name, "write-baseline") {
			base = rate
			fmt.Printf("system=%s tx_per_sec=%.0f\n", v.name, rate)
			continue
		}
		fmt.Printf("system=%s tx_per_sec=%.0f ratio=%.2f\n", v.name, rate, rate/base)
	}
	return nil
}

// shopChanges makes the business transaction of the "-shop" variants look
// like placing an order in a shop: its three lines, and the stock of their
// products (sorted, so concurrent orders lock products in the same order).
func shopChanges(ctx context.Context, tx pgx.Tx, seq int64) error {
	e := event(seq)
	skus := make([]string, 0, len(e.Lines))
	for _, l := range e.Lines {
		skus = append(skus, l.SKU)
	}
	if _, err := tx.Exec(ctx, `
INSERT INTO bench_order_lines (order_id, sku, quantity, price_cents)
SELECT $1, l.sku, 1, 1000 FROM unnest($2::text[]) AS l(sku)`, e.OrderID, skus); err != nil {
		return err
	}
	slices.Sort(skus)
	_, err := tx.Exec(ctx, `UPDATE bench_products SET stock = stock - 1 WHERE sku = ANY($1)`, skus)
	return err
}

// closedLoop runs do from cfg.writers goroutines for d and counts the
// successful calls.
func (e *env) closedLoop(ctx context.Context, d time.Duration, do func(ctx context.Context) error) (int64, time.Duration, error) {
	var n atomic.Int64
	var firstErr atomic.Pointer[error]
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range e.cfg.writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err := do(ctx); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return 0, 0, *p
	}
	return n.Load(), time.Since(start), ctx.Err()
}

// --- phase 3: latency --------------------------------------------------------

// latency writes cfg.rate messages per second for cfg.duration, each in its
// own business transaction, and measures from the commit returning to the
// record being readable by a consumer. The first second is warm-up (schema
// registration, connections) and left out.
func (e *env) latency(ctx context.Context) error {
	total := int(float64(e.cfg.rate) * e.cfg.duration.Seconds())
	warmup := e.cfg.rate
	for _, s := range e.systems {
		topic := "lat-" + s.name()
		if err := e.createTopic(ctx, topic); err != nil {
			return err
		}
		r, err := e.receive(ctx, topic, total)
		if err != nil {
			return err
		}
		stop, err := s.start(ctx)
		if err != nil {
			r.stop()
			return fmt.Errorf("%s: start: %w", s.name(), err)
		}
		committed, behind, err := e.paced(ctx, total, func(ctx context.Context, seq int64) error {
			return s.write(ctx, topic, []int64{seq}, true)
		})
		if err == nil {
			select {
			case <-r.allSeen:
			case <-time.After(30 * time.Second):
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		stop()
		r.stop()
		if err != nil {
			return fmt.Errorf("%s: %w", s.name(), err)
		}
		var lat []time.Duration
		missing := 0
		for seq := warmup; seq < total; seq++ {
			if r.at[seq] == 0 {
				missing++
				continue
			}
			lat = append(lat, max(0, time.Duration(r.at[seq]-committed[seq])))
		}
		if e.cfg.verbose {
			for from := 0; from < total; from += e.cfg.rate {
				var worst time.Duration
				for seq := from; seq < min(from+e.cfg.rate, total); seq++ {
					if r.at[seq] != 0 {
						worst = max(worst, time.Duration(r.at[seq]-committed[seq]))
					}
				}
				fmt.Printf("# %s: second %d: worst %s\n", s.name(), from/e.cfg.rate, worst.Round(100*time.Microsecond))
			}
		}
		slices.Sort(lat)
		if len(lat) == 0 {
			fmt.Printf("# %s: no message became readable\n", s.name())
			continue
		}
		pct := func(p float64) float64 {
			return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / float64(time.Millisecond)
		}
		fmt.Printf("system=%s p50_ms=%.1f p99_ms=%.1f\n", s.name(), pct(0.50), pct(0.99))
		fmt.Printf("# %s: %d messages at %d/s (writers fell behind the schedule by up to %s), max %.1f ms, %d missing, %d duplicates\n",
			s.name(), len(lat), e.cfg.rate, behind.Round(time.Millisecond), pct(1), missing, r.dups.Load())
	}
	return nil
}

// paced calls do for seq 0..total-1, seq i being due at start + i/rate,
// from enough goroutines to keep the schedule, and returns when each call
// returned (the commit time).
func (e *env) paced(ctx context.Context, total int, do func(ctx context.Context, seq int64) error) ([]int64, time.Duration, error) {
	committed := make([]int64, total)
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var behind atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range e.cfg.writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && firstErr.Load() == nil {
				seq := next.Add(1) - 1
				if seq >= int64(total) {
					return
				}
				due := start.Add(time.Duration(seq) * time.Second / time.Duration(e.cfg.rate))
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				} else if -d > time.Duration(behind.Load()) {
					behind.Store(int64(-d))
				}
				if err := do(ctx, seq); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				committed[seq] = time.Now().UnixNano()
			}
		}()
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return nil, 0, *p
	}
	return committed, time.Duration(behind.Load()), ctx.Err()
}
