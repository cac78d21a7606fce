// Command sagabench runs a three-step saga end to end, through the outbox,
// an in-process Kafka broker (kfake, real TCP), an in-process Schema
// Registry (srfake) and a real Postgres, and prints
//
//	system=saga sagas_per_sec=<n> p50_ms=<x> p99_ms=<y>
//
// sagas_per_sec counts sagas completed per second of wall time, from the
// first Start to the last completion; p50/p99 are the time from a saga's
// start to its completion (its row's created_at to finished_at, both
// Postgres transaction timestamps).
//
// Every saga: the saga row and the first command are written in the
// starter's own transaction (Orchestrator.Queue sent with outbox.SendTx,
// or -start start: Orchestrator.Start in pgx.BeginFunc); each of three
// participants (each its own consumer group, inbox barrier, reply through
// the outbox) answers one command; the orchestrator applies each reply and
// writes the next command. Replies arriving together share a transaction,
// and so do commands. That is 6 Kafka messages per saga.
//
// It also prints the CPU time per saga of this process and of the Postgres
// backends, by component (each has its own pool and application_name): a
// steadier figure than throughput on a shared machine.
//
// Unpaced (the default), it then runs paced at a quarter and at half of the
// capacity it just measured, -paced-seconds each, and prints
//
//	system=saga-paced rate=<r> sagas_per_sec=<n> p50_ms=<x> p99_ms=<y>
//
// for each. For every phase it prints to stderr where a saga's time went,
// per step: the command leg (command written until the participant's
// handler runs) and the reply leg (handler until the orchestrator applied
// the reply), p50 and p99.
//
// It creates a fresh database on -database-url and drops it at the end.
//
//	go run ./cmd/sagabench                       # 10,000 sagas, unpaced
//	go run ./cmd/sagabench -rate 1000            # paced: latency at a given rate
//	go run ./cmd/sagabench -partitions 32 -start start
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr/srfake"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

const payloadSchema = `{"type": "record", "name": "Line", "namespace": "sagabench",
 "fields": [{"name": "order_id", "type": "string"}, {"name": "amount", "type": "long"}]}`

type line struct {
	OrderID string `avro:"order_id"`
	Amount  int64  `avro:"amount"`
}

// countingExporter is the -trace exporter: it keeps nothing and counts what
// the SDK hands it, so the run measures tracing's cost in the process, not
// an exporter's.
type countingExporter struct{ n atomic.Int64 }

func (e *countingExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.n.Add(int64(len(spans)))
	return nil
}

func (e *countingExporter) Shutdown(context.Context) error { return nil }

// steps are the saga's steps, in order; each has its participant and its
// command topic, <step>.commands.
var steps = []string{"reserve_stock", "debit_credit", "ship"}

type orderData struct {
	OrderID string
	Amount  int64
}

func main() {
	databaseURL := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "Postgres server; a fresh database is created there and dropped at the end")
	sagas := flag.Int("sagas", 10000, "sagas to run in the measured phase")
	starters := flag.Int("starters", 16, "goroutines starting sagas")
	rate := flag.Int("rate", 0, "sagas started per second (0: as fast as possible)")
	partitions := flag.Int("partitions", 128, "partitions per topic (each consumer handles one message per partition at a time, so more partitions means bigger shared transactions)")
	maxConns := flag.Int("max-conns", 12, "connections per pool (the starters, the orchestrator, each participant and the relay have their own pool, as separate services would)")
	start := flag.String("start", "queue", "how each saga starts in its own transaction: queue (Orchestrator.Queue, sent with outbox.SendTx: one round trip) or start (Orchestrator.Start in pgx.BeginFunc: three)")
	verbose := flag.Bool("v", false, "log at debug level")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	pacedSeconds := flag.Int("paced-seconds", 10, "after the unpaced run, run paced at a quarter and at half of its capacity for this long each (0: skip; ignored with -rate)")
	traced := flag.Bool("trace", false, "trace every saga: always-sample SDK with an exporter that only counts spans (the cost of tracing on; off, the default, is the global no-op)")
	hops := flag.Bool("hops", true, "also read every topic with a separate Kafka client to split each leg at the relay's publish (the record timestamp); -hops=false leaves the system alone")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *start != "queue" && *start != "start" {
		fmt.Fprintf(os.Stderr, "sagabench: -start %q: want queue or start\n", *start)
		os.Exit(2)
	}
	o := options{adminURL: *databaseURL, n: *sagas, starters: *starters, rate: *rate, partitions: *partitions,
		maxConns: int32(*maxConns), queue: *start == "queue", verbose: *verbose, pacedSeconds: *pacedSeconds, hops: *hops, trace: *traced}
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "sagabench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	adminURL                      string
	n, starters, rate, partitions int
	pacedSeconds                  int
	maxConns                      int32
	queue, verbose, hops, trace   bool
}

func run(ctx context.Context, o options) error {
	log := slog.New(slog.DiscardHandler)
	if o.verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if o.trace {
		spans := &countingExporter{}
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(spans))
		otel.SetTracerProvider(tp)
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = tp.Shutdown(sctx)
			fmt.Fprintf(os.Stderr, "sagabench: tracing on: %d spans exported\n", spans.n.Load())
		}()
	}
	newPool, drop, err := freshDatabase(ctx, o.adminURL)
	if err != nil {
		return err
	}
	defer drop()
	// One pool per component, each with its own application_name, so that
	// the CPU its Postgres backends use can be told apart.
	var pools []*pgxpool.Pool
	defer func() {
		for _, p := range pools {
			p.Close()
		}
	}()
	open := func(name string, conns int32) (*pgxpool.Pool, error) {
		p, err := newPool(name, conns)
		if err == nil {
			pools = append(pools, p)
		}
		return p, err
	}
	pool, err := open("starters", int32(o.starters)+2)
	if err != nil {
		return err
	}
	orchPool, err := open("orchestrator", o.maxConns)
	if err != nil {
		return err
	}
	relayPool, err := open("relay", o.maxConns)
	if err != nil {
		return err
	}
	if err := outbox.Migrate(ctx, pool); err != nil {
		return err
	}
	if err := saga.Migrate(ctx, pool); err != nil {
		return err
	}

	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(o.partitions))
	if err != nil {
		return err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	reg := srfake.New()
	defer reg.Close()

	codec := outbox.MustCodec(append(saga.Schemas(), payloadSchema)...)
	var relayPtr atomic.Pointer[outbox.Relay]
	writer, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec, Notify: func() {
		if r := relayPtr.Load(); r != nil {
			r.Notify()
		}
	}, NotifyCommitted: func() {
		if r := relayPtr.Load(); r != nil {
			r.NotifyCommitted()
		}
	}})
	if err != nil {
		return err
	}
	if err := writer.StoreSchemas(ctx, orchPool); err != nil {
		return err
	}
	relay, err := outbox.NewRelay(outbox.RelayConfig{Pool: relayPool, Brokers: brokers,
		Registry: srclient.NewSchemaRegistryClient(reg.URL()), Logger: log})
	if err != nil {
		return err
	}
	relayPtr.Store(relay)

	step := func(name string) saga.Step[orderData] {
		return saga.Step[orderData]{Name: name,
			Invoke: &saga.Invocation[orderData]{Topic: name + ".commands", Command: name, Type: "sagabench.Line",
				Payload: func(d *orderData) (any, error) { return line{OrderID: d.OrderID, Amount: d.Amount}, nil }},
			Compensate: &saga.Invocation[orderData]{Topic: name + ".commands", Command: "undo_" + name, Type: "sagabench.Line",
				Payload: func(d *orderData) (any, error) { return line{OrderID: d.OrderID, Amount: d.Amount}, nil }},
		}
	}
	def := saga.MustDefinition("bench_order", 1, step("reserve_stock"), step("debit_credit"), step("ship"))
	orch, err := saga.NewOrchestrator(&benchRuntime{pool: orchPool, writer: writer, codec: codec, brokers: brokers,
		registry: srclient.NewSchemaRegistryClient(reg.URL()), log: log}, saga.Config{ReplyTopic: "orders.replies"}, def)
	if err != nil {
		return err
	}

	handled := &handledTimes{at: map[handledKey]time.Time{}, published: map[string]published{}, replied: map[string]time.Time{}}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	goRun := func(f func(context.Context) error) {
		wg.Go(func() {
			if err := f(runCtx); err != nil {
				errs <- err
			}
		})
	}
	goRun(relay.Run)
	goRun(orch.Run)
	for _, name := range steps {
		ppool, err := open(name, o.maxConns)
		if err != nil {
			cancel()
			return err
		}
		ok := func(ctx context.Context, tx pgx.Tx, cmd *saga.Command, l line) (any, error) {
			handled.record(cmd.SagaID.String(), cmd.Step, time.Now())
			return nil, nil
		}
		p, err := saga.NewParticipant(&benchRuntime{pool: ppool, writer: writer, codec: codec, brokers: brokers,
			registry: srclient.NewSchemaRegistryClient(reg.URL()), log: log},
			saga.ParticipantConfig{Name: name, CommandTopic: name + ".commands",
				Handlers: []saga.Handler{saga.HandleCommand(name, ok), saga.HandleCommand("undo_"+name, ok)}})
		if err != nil {
			cancel()
			return err
		}
		goRun(p.Run)
	}
	defer func() {
		cancel()
		wg.Wait()
	}()

	// Warm-up: consumer groups join, schemas get registered, pools fill.
	if _, err := phase(ctx, pool, orch, writer, 200, o.starters, 0, "warmup", o.queue); err != nil {
		return err
	}
	if o.hops {
		stopObserver, err := observe(brokers, steps, "orders.replies", handled)
		if err != nil {
			return err
		}
		defer stopObserver()
	}
	unpaced, err := measure(ctx, pool, orch, writer, handled, o, o.n, o.rate, "run")
	if err != nil {
		return err
	}
	select {
	case err := <-errs:
		return err
	default:
	}
	fmt.Printf("system=saga sagas_per_sec=%.0f p50_ms=%.1f p99_ms=%.1f\n", unpaced.perSec, unpaced.p50, unpaced.p99)
	if o.rate > 0 || o.pacedSeconds <= 0 {
		return nil
	}
	// Latency at everyday load: paced at a quarter and at half of the
	// capacity just measured, each for pacedSeconds.
	for _, frac := range []int{4, 2} {
		rate := int(unpaced.perSec) / frac
		if rate < 1 {
			rate = 1
		}
		n := rate * o.pacedSeconds
		r, err := measure(ctx, pool, orch, writer, handled, o, n, rate, fmt.Sprintf("paced-%d", frac))
		if err != nil {
			return err
		}
		fmt.Printf("system=saga-paced rate=%d sagas_per_sec=%.0f p50_ms=%.1f p99_ms=%.1f\n", rate, r.perSec, r.p50, r.p99)
	}
	select {
	case err := <-errs:
		return err
	default:
	}
	return nil
}

// measure runs one measured phase of n sagas at rate (0: unpaced) and
// prints, to stderr, its CPU per saga and where a saga's time went.
func measure(ctx context.Context, pool *pgxpool.Pool, orch *saga.Orchestrator[orderData], writer *outbox.Writer, handled *handledTimes, o options, n, rate int, label string) (result, error) {
	cpuBefore, err := cpuTimes(ctx, pool)
	if err != nil {
		return result{}, err
	}
	res, err := phase(ctx, pool, orch, writer, n, o.starters, rate, label, o.queue)
	if err != nil {
		return result{}, err
	}
	cpuAfter, err := cpuTimes(ctx, pool)
	if err != nil {
		return result{}, err
	}
	self, server, byApp := cpuAfter.sub(cpuBefore)
	perSaga := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(n) }
	how := "start"
	if o.queue {
		how = "queue"
	}
	fmt.Fprintf(os.Stderr, "sagabench: %s: %d sagas, %d starters (-start %s), %d partitions, rate %d/s (0 = unpaced); %d succeeded\n",
		label, n, o.starters, how, o.partitions, rate, res.succeeded)
	if server > 0 {
		fmt.Fprintf(os.Stderr, "sagabench: %s: CPU per saga: %.2f ms in this process, %.2f ms in its Postgres backends (", label, perSaga(self), perSaga(server))
		for i, app := range slices.Sorted(maps.Keys(byApp)) {
			if i > 0 {
				fmt.Fprint(os.Stderr, ", ")
			}
			fmt.Fprintf(os.Stderr, "%s %.2f", app, perSaga(byApp[app]))
		}
		fmt.Fprintln(os.Stderr, ")")
	} else {
		fmt.Fprintf(os.Stderr, "sagabench: %s: CPU per saga: %.2f ms in this process (Postgres backends not readable here)\n", label, perSaga(self))
	}
	if err := breakdown(ctx, pool, handled, label); err != nil {
		return result{}, err
	}
	return res, nil
}

// handledTimes records when a participant's handler ran each saga's step
// (the first delivery).
type handledTimes struct {
	mu sync.Mutex
	at map[handledKey]time.Time
	// With -hops: when the relay published each step's command (by the
	// command's message ID) and each reply (by the command it answers,
	// its causation ID), from the record timestamps.
	published map[string]published
	replied   map[string]time.Time
}

type published struct {
	key handledKey
	at  time.Time
}

// observe reads the command topics and the reply topic with a Kafka client
// of its own, from the start, and records when the relay published each
// record (the record batch's timestamp is set by the relay when it builds
// the produce request).
func observe(brokers []string, steps []string, replyTopic string, h *handledTimes) (stop func(), err error) {
	topics := []string{replyTopic}
	stepOf := map[string]int{}
	for i, s := range steps {
		topics = append(topics, s+".commands")
		stepOf[s+".commands"] = i
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("observer: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			fs.EachRecord(func(r *kgo.Record) {
				var id, sagaID, cause string
				for _, kv := range r.Headers {
					switch kv.Key {
					case outbox.HeaderID:
						id = string(kv.Value)
					case outbox.HeaderSagaID:
						sagaID = string(kv.Value)
					case outbox.HeaderCausationID:
						cause = string(kv.Value)
					}
				}
				h.mu.Lock()
				if r.Topic == replyTopic {
					if _, ok := h.replied[cause]; !ok && cause != "" {
						h.replied[cause] = r.Timestamp
					}
				} else if _, ok := h.published[id]; !ok && id != "" {
					h.published[id] = published{handledKey{sagaID, stepOf[r.Topic]}, r.Timestamp}
				}
				h.mu.Unlock()
			})
		}
	}()
	return func() { cancel(); <-done; cl.Close() }, nil
}

// hops returns, per saga and step, when its command and its reply were
// published (first publication each).
func (h *handledTimes) hops() map[handledKey][2]time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[handledKey][2]time.Time{}
	for id, p := range h.published {
		r, ok := h.replied[id]
		if !ok {
			continue
		}
		if _, seen := out[p.key]; !seen {
			out[p.key] = [2]time.Time{p.at, r}
		}
	}
	return out
}

type handledKey struct {
	saga string
	step int
}

func (h *handledTimes) record(sagaID string, step int, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := handledKey{sagaID, step}
	if _, ok := h.at[k]; !ok {
		h.at[k] = at
	}
}

func (h *handledTimes) get(sagaID string, step int) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.at[handledKey{sagaID, step}]
	return t, ok
}

// breakdown prints, per step, the p50 and p99 of a saga's two legs: the
// command leg (the step's command written, in the starter's or the
// orchestrator's transaction, until the participant's handler runs:
// commit, relay poll and publish, the participant's fetch, its
// transaction's begin and inbox read) and the reply leg (the handler until
// the orchestrator applied the reply: the participant's commit, relay
// publish, the orchestrator's fetch and transaction), then the last reply
// until the saga's row is final. Step times are the orchestrator's
// (saga_steps); handler times the participants' clock, in this process.
func breakdown(ctx context.Context, pool *pgxpool.Pool, handled *handledTimes, label string) error {
	rows, err := pool.Query(ctx, `SELECT st.saga_id::text, st.step, st.started_at, st.finished_at
		FROM sagabox.saga_steps st JOIN sagabox.sagas s ON s.id = st.saga_id
		WHERE s.correlation_id = $1 AND NOT st.compensation AND st.finished_at IS NOT NULL`, label)
	if err != nil {
		return err
	}
	type leg struct {
		command, reply []time.Duration
		// with -hops: the command leg split at the command's publish
		// (toPublish: commit and relay; toHandler: Kafka, the
		// participant's fetch and transaction), the reply leg at the
		// reply's publish
		cmdPublish, cmdConsume, replyPublish, replyConsume []time.Duration
	}
	legs := map[int]*leg{}
	hops := handled.hops()
	for rows.Next() {
		var id string
		var step int
		var started, finished time.Time
		if err := rows.Scan(&id, &step, &started, &finished); err != nil {
			rows.Close()
			return err
		}
		h, ok := handled.get(id, step)
		if !ok {
			continue
		}
		if legs[step] == nil {
			legs[step] = &leg{}
		}
		l := legs[step]
		l.command = append(l.command, h.Sub(started))
		l.reply = append(l.reply, finished.Sub(h))
		if hp, ok := hops[handledKey{id, step}]; ok {
			l.cmdPublish = append(l.cmdPublish, hp[0].Sub(started))
			l.cmdConsume = append(l.cmdConsume, h.Sub(hp[0]))
			l.replyPublish = append(l.replyPublish, hp[1].Sub(h))
			l.replyConsume = append(l.replyConsume, finished.Sub(hp[1]))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	ms := func(d []time.Duration, p float64) float64 {
		if len(d) == 0 {
			return 0
		}
		slices.Sort(d)
		return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
	}
	for _, step := range slices.Sorted(maps.Keys(legs)) {
		l := legs[step]
		fmt.Fprintf(os.Stderr, "sagabench: %s: step %d: command leg p50 %.1f p99 %.1f ms, reply leg p50 %.1f p99 %.1f ms (%d sagas)\n",
			label, step, ms(l.command, 0.5), ms(l.command, 0.99), ms(l.reply, 0.5), ms(l.reply, 0.99), len(l.command))
		if len(l.cmdPublish) > 0 {
			fmt.Fprintf(os.Stderr, "sagabench: %s: step %d hops p50/p99 ms: command written->published %.1f/%.1f, published->handled %.1f/%.1f; handled->reply published %.1f/%.1f, reply published->applied %.1f/%.1f (%d sagas)\n",
				label, step, ms(l.cmdPublish, 0.5), ms(l.cmdPublish, 0.99), ms(l.cmdConsume, 0.5), ms(l.cmdConsume, 0.99),
				ms(l.replyPublish, 0.5), ms(l.replyPublish, 0.99), ms(l.replyConsume, 0.5), ms(l.replyConsume, 0.99), len(l.cmdPublish))
		}
	}
	return nil
}

type result struct {
	perSec, p50, p99 float64
	succeeded        int
}

// phase starts n sagas (tagged with label) and waits until all are finished.
// start starts one saga in its own transaction, as a service would with its
// business change: with Orchestrator.Queue and outbox.SendTx, BEGIN, the
// saga's statements and COMMIT in one round trip; with Start in
// pgx.BeginFunc, in three.
func start(ctx context.Context, pool *pgxpool.Pool, orch *saga.Orchestrator[orderData], w *outbox.Writer, data orderData, label string, queue bool) error {
	opts := saga.StartOptions{CorrelationID: label}
	ctx, span := otel.Tracer("sagabench").Start(ctx, "start saga") // a no-op unless -trace
	defer span.End()
	ctx, committed := w.DeferNotify(ctx) // the relay is woken once the saga is committed
	var err error
	if !queue {
		err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := orch.Start(ctx, tx, data, opts)
			return err
		})
	} else {
		b := &pgx.Batch{}
		if _, err := orch.Queue(ctx, b, data, opts); err != nil {
			return err
		}
		err = outbox.SendTx(ctx, pool, b)
	}
	if err == nil {
		committed()
	}
	return err
}

func phase(ctx context.Context, pool *pgxpool.Pool, orch *saga.Orchestrator[orderData], w *outbox.Writer, n, starters, rate int, label string, queue bool) (result, error) {
	var next atomic.Int64
	begin := time.Now()
	var wg sync.WaitGroup
	startErr := make(chan error, starters)
	for range starters {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if rate > 0 {
					if d := time.Until(begin.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
						time.Sleep(d)
					}
				}
				if err := start(ctx, pool, orch, w, orderData{OrderID: fmt.Sprintf("%s-%d", label, i), Amount: i}, label, queue); err != nil {
					startErr <- err
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-startErr:
		return result{}, err
	default:
	}
	if label != "warmup" {
		fmt.Fprintf(os.Stderr, "sagabench: started %d sagas in %s\n", n, time.Since(begin).Round(time.Millisecond))
	}
	// Wait for the last saga. The poll asks whether any saga of the phase
	// is unfinished, through the partial index that holds the unfinished
	// ones (sagas_unfinished), and stops at the first: polling 50 times a
	// second must not cost the run it measures (counting them all, or
	// scanning every saga, did). Completion times come from the rows, not
	// from this loop.
	for {
		var pending bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM sagabox.sagas
			WHERE (finished_at IS NULL OR status = 'failed') AND finished_at IS NULL AND correlation_id = $1)`, label).Scan(&pending); err != nil {
			return result{}, err
		}
		if !pending {
			break
		}
		select {
		case <-ctx.Done():
			return result{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	var r result
	var first, last time.Time
	err := pool.QueryRow(ctx, `SELECT min(created_at), max(finished_at),
		percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) * 1000,
		percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) * 1000,
		count(*) FILTER (WHERE status = 'succeeded')
		FROM sagabox.sagas WHERE correlation_id = $1`, label).Scan(&first, &last, &r.p50, &r.p99, &r.succeeded)
	if err != nil {
		return result{}, err
	}
	r.perSec = float64(n) / last.Sub(first).Seconds()
	return r, nil
}

// freshDatabase creates a database on adminURL's server and returns a
// function that opens pools on it, and one that drops it.
func freshDatabase(ctx context.Context, adminURL string) (func(app string, maxConns int32) (*pgxpool.Pool, error), func(), error) {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "sagabench_" + hex.EncodeToString(rnd[:])
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w", adminURL, err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return nil, nil, err
	}
	drop := func() {
		c, err := pgx.Connect(context.Background(), adminURL)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		drop()
		return nil, nil, err
	}
	u.Path = "/" + name
	open := func(app string, maxConns int32) (*pgxpool.Pool, error) {
		cfg, err := pgxpool.ParseConfig(u.String())
		if err != nil {
			return nil, err
		}
		cfg.MaxConns = maxConns
		cfg.ConnConfig.RuntimeParams["application_name"] = "sagabench-" + app
		return pgxpool.NewWithConfig(ctx, cfg)
	}
	return open, drop, nil
}

// cpuSnapshot is the CPU time used so far by this process and by the
// Postgres backends serving this benchmark's database.
type cpuSnapshot struct {
	self     time.Duration
	backends map[int]backendCPU
}

type backendCPU struct {
	app string
	cpu time.Duration
}

// sub returns the CPU time used between s0 and s: this process's, the
// backends', and the backends' by application name without its
// "sagabench-" prefix (a backend that connected in between counts from
// zero).
func (s cpuSnapshot) sub(s0 cpuSnapshot) (self, server time.Duration, byApp map[string]time.Duration) {
	byApp = map[string]time.Duration{}
	for pid, b := range s.backends {
		d := b.cpu - s0.backends[pid].cpu
		server += d
		byApp[strings.TrimPrefix(b.app, "sagabench-")] += d
	}
	return s.self - s0.self, server, byApp
}

// cpuTimes reads the CPU times. CPU time per saga is a steadier figure than
// throughput on a shared machine: other load slows the run down but costs
// this run's processes little extra CPU. The backends are read from
// /proc/<pid>/stat, which works only when Postgres runs on this machine;
// otherwise the map is empty.
func cpuTimes(ctx context.Context, pool *pgxpool.Pool) (cpuSnapshot, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return cpuSnapshot{}, err
	}
	snap := cpuSnapshot{self: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), backends: map[int]backendCPU{}}
	rows, err := pool.Query(ctx, `SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		return cpuSnapshot{}, err
	}
	type backend struct {
		PID int32
		App string
	}
	backends, err := pgx.CollectRows(rows, pgx.RowToStructByPos[backend])
	if err != nil {
		return cpuSnapshot{}, err
	}
	for _, b := range backends {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", b.PID))
		if err != nil {
			continue
		}
		// Fields after the command name (which is in parentheses): utime
		// and stime are the 14th and 15th fields of the line, in clock ticks.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		snap.backends[int(b.PID)] = backendCPU{app: b.App, cpu: time.Duration(ut+st) * time.Second / clockTicks}
	}
	return snap, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on Linux.
const clockTicks = 100

// benchRuntime is the saga.Runtime of a component on its own pool (so that
// its Postgres CPU is counted apart); the benchmark runs every part itself.
type benchRuntime struct {
	pool     *pgxpool.Pool
	writer   *outbox.Writer
	codec    *outbox.Codec
	brokers  []string
	registry srclient.ISchemaRegistryClient
	log      *slog.Logger
}

func (r *benchRuntime) Pool() *pgxpool.Pool                              { return r.pool }
func (r *benchRuntime) Writer() *outbox.Writer                           { return r.writer }
func (r *benchRuntime) Codec() *outbox.Codec                             { return r.codec }
func (r *benchRuntime) Brokers() []string                                { return r.brokers }
func (r *benchRuntime) Registry() srclient.ISchemaRegistryClient         { return r.registry }
func (r *benchRuntime) Logger() *slog.Logger                             { return r.log }
func (r *benchRuntime) Registerer() prometheus.Registerer                { return nil }
func (r *benchRuntime) Attach(string, func(context.Context) error) error { return nil }
