package saga_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr/srfake"
)

// The shop-like saga the tests run: reserve stock (catalog), debit credit
// (users), approve the order (a local pivot step).

const (
	catalogTopic = "catalog.commands"
	usersTopic   = "users.commands"
	replyTopic   = "orders.saga.replies"
)

const reserveStockSchema = `{"type": "record", "name": "ReserveStock", "namespace": "test.catalog",
 "fields": [{"name": "item", "type": "string"}, {"name": "qty", "type": "int"}]}`
const stockReservedSchema = `{"type": "record", "name": "StockReserved", "namespace": "test.catalog",
 "fields": [{"name": "reservation_id", "type": "string"}]}`
const debitCreditSchema = `{"type": "record", "name": "DebitCredit", "namespace": "test.users",
 "fields": [{"name": "user", "type": "string"}, {"name": "amount", "type": "int"}]}`

type reserveStock struct {
	Item string `avro:"item"`
	Qty  int    `avro:"qty"`
}

type stockReserved struct {
	ReservationID string `avro:"reservation_id"`
}

type debitCredit struct {
	User   string `avro:"user"`
	Amount int    `avro:"amount"`
}

// order is the saga's data.
type order struct {
	OrderID       string
	Item          string
	Qty           int
	User          string
	Amount        int
	ReservationID string
}

func testCodec() *outbox.Codec {
	return outbox.MustCodec(append(saga.Schemas(), reserveStockSchema, stockReservedSchema, debitCreditSchema)...)
}

// tuning lets a test shorten timeouts and retries.
type tuning struct {
	Timeout     time.Duration
	Attempts    int
	CompAttempt int
	// CompTimeout defaults to Timeout.
	CompTimeout time.Duration
	// UsersTopic replaces the users participant's topic (a topic nobody
	// consumes makes a participant that never answers).
	UsersTopic string
	// Version defaults to 3; NoDebit leaves the debit_credit step out (an
	// older version of the saga).
	Version int
	NoDebit bool
}

func orderDefinition(tn tuning) *saga.Definition[order] {
	if tn.Timeout == 0 {
		tn.Timeout = 20 * time.Second
	}
	if tn.UsersTopic == "" {
		tn.UsersTopic = usersTopic
	}
	if tn.Version == 0 {
		tn.Version = 3
	}
	retry := saga.RetryPolicy{MaxAttempts: tn.Attempts, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	compRetry := saga.RetryPolicy{MaxAttempts: tn.CompAttempt, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	steps := []saga.Step[order]{
		{
			Name: "reserve_stock",
			Invoke: &saga.Invocation[order]{Topic: catalogTopic, Command: "reserve_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil },
				OnReply: func(o *order, r *saga.Reply) error {
					var v stockReserved
					if err := r.Decode(&v); err != nil {
						return err
					}
					o.ReservationID = v.ReservationID
					return nil
				}},
			Compensate: &saga.Invocation[order]{Topic: catalogTopic, Command: "release_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Timeout: tn.Timeout, Retry: retry, CompensationRetry: compRetry, CompensationTimeout: tn.CompTimeout,
		},
		{
			Name: "debit_credit",
			Invoke: &saga.Invocation[order]{Topic: tn.UsersTopic, Command: "debit_credit", Type: "test.users.DebitCredit",
				Payload: func(o *order) (any, error) { return debitCredit{User: o.User, Amount: o.Amount}, nil }},
			Compensate: &saga.Invocation[order]{Topic: tn.UsersTopic, Command: "refund_credit", Type: "test.users.DebitCredit",
				Payload: func(o *order) (any, error) { return debitCredit{User: o.User, Amount: o.Amount}, nil }},
			Timeout: tn.Timeout, Retry: retry, CompensationRetry: compRetry, CompensationTimeout: tn.CompTimeout,
		},
		{
			Name: "approve_order", Kind: saga.Pivot,
			// The pivot: a business rule checked in the orchestrator's own
			// transaction. Orders for "vetoed" items are refused.
			Local: func(ctx context.Context, tx pgx.Tx, o *order) error {
				var vetoed bool
				if err := tx.QueryRow(ctx, `UPDATE orders SET status = CASE WHEN item = 'vetoed' THEN 'vetoed' ELSE 'approved' END
					WHERE id = $1 RETURNING item = 'vetoed'`, o.OrderID).Scan(&vetoed); err != nil {
					return err
				}
				if vetoed {
					return saga.Reject("item is vetoed")
				}
				return nil
			},
		},
	}
	if tn.NoDebit {
		steps = slices.Delete(steps, 1, 2)
	}
	return saga.MustDefinition("create_order", tn.Version, steps...)
}

// world is one test's infrastructure: its database, Kafka, registry, relay.
type world struct {
	t        *testing.T
	db       *testkit.Database
	ctx      context.Context
	pool     *pgxpool.Pool
	kafka    *kfake.Cluster
	brokers  []string
	registry *srfake.Registry
	codec    *outbox.Codec
	writer   *outbox.Writer
	relay    atomic.Pointer[outbox.Relay]
	wg       sync.WaitGroup
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("SAGABOX_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// newWorld migrates a fresh database (outbox, saga and the test's business
// tables) and, unless partitions is 0, starts Kafka, the registry and a relay.
func newWorld(t *testing.T, partitions int) *world {
	t.Helper()
	db := testkit.NewDatabase(t)
	ctx, cancel := context.WithCancel(context.Background())
	w := &world{t: t, db: db, ctx: ctx, pool: db.Pool, codec: testCodec()}
	// Runs before the database is dropped: stop every component first.
	t.Cleanup(func() { cancel(); w.wg.Wait() })
	testkit.Must(t, outbox.Migrate(ctx, w.pool), "outbox migrate")
	testkit.Must(t, saga.Migrate(ctx, w.pool), "saga migrate")
	_, err := w.pool.Exec(ctx, `
CREATE TABLE orders (id text PRIMARY KEY, item text NOT NULL, status text NOT NULL DEFAULT 'pending');
CREATE TABLE stock (item text PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0));
CREATE TABLE credit (username text PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0));
-- Every effect a participant applies, to count duplicates and order.
CREATE TABLE effects (n bigint GENERATED ALWAYS AS IDENTITY, saga_id uuid NOT NULL, what text NOT NULL);
-- Switches a test flips to make a participant misbehave.
CREATE TABLE faults (name text PRIMARY KEY);`)
	testkit.Must(t, err, "business tables")
	w.writer, err = outbox.NewWriter(outbox.WriterConfig{Codec: w.codec, Notify: func() {
		if r := w.relay.Load(); r != nil {
			r.Notify()
		}
	}})
	testkit.Must(t, err, "writer")
	testkit.Must(t, w.writer.StoreSchemas(ctx, w.pool), "store schemas")
	if partitions == 0 {
		return w // database only
	}
	w.kafka = testkit.Kafka(t, partitions)
	w.brokers = w.kafka.ListenAddrs()
	w.registry = testkit.Registry(t)
	relay, err := outbox.NewRelay(outbox.RelayConfig{Pool: w.pool, Brokers: w.brokers,
		Registry: srclient.NewSchemaRegistryClient(w.registry.URL()), Logger: testLogger(t),
		PollInterval: 20 * time.Millisecond, LeaseTTL: 2 * time.Second, ProduceTimeout: 500 * time.Millisecond,
		RetryBackoff: 20 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond,
		// Keep published messages (in outbox_archive) so tests can count
		// every command ever written.
		ArchiveFor: time.Hour})
	testkit.Must(t, err, "relay")
	w.relay.Store(relay)
	w.goRun("relay", relay.Run)
	return w
}

// goRun runs a component until the test ends and fails the test if it
// returns an error.
func (w *world) goRun(name string, run func(context.Context) error) {
	w.goRunCtx(w.ctx, name, run)
}

func (w *world) goRunCtx(ctx context.Context, name string, run func(context.Context) error) {
	w.wg.Go(func() {
		if err := run(ctx); err != nil {
			w.t.Errorf("%s: %v", name, err)
		}
	})
}

func (w *world) registryClient() srclient.ISchemaRegistryClient {
	if w.registry == nil {
		return nil
	}
	return srclient.NewSchemaRegistryClient(w.registry.URL())
}

func (w *world) orchestratorConfig() saga.Config {
	return saga.Config{ReplyTopic: replyTopic, PollInterval: 20 * time.Millisecond, NackResendSleep: 20 * time.Millisecond}
}

// orchestrator builds an orchestrator of defs (the newest starts sagas);
// mod may change its config and runtime (pool, registry, registerer).
func (w *world) orchestrator(def *saga.Definition[order], mod func(*saga.Config, *testRuntime), more ...*saga.Definition[order]) *saga.Orchestrator[order] {
	w.t.Helper()
	cfg, rt := w.orchestratorConfig(), w.runtime(nil)
	if mod != nil {
		mod(&cfg, rt)
	}
	o, err := saga.NewOrchestrator(rt, cfg, append([]*saga.Definition[order]{def}, more...)...)
	testkit.Must(w.t, err, "orchestrator")
	return o
}

// startOrchestrator runs o until stop is called or the test ends.
func (w *world) startOrchestrator(o *saga.Orchestrator[order]) (stop func()) {
	ctx, cancel := context.WithCancel(w.ctx)
	done := make(chan struct{})
	w.wg.Go(func() {
		defer close(done)
		if err := o.Run(ctx); err != nil {
			w.t.Errorf("orchestrator: %v", err)
		}
	})
	return func() { cancel(); <-done }
}

// fault reads a switch inside the handler's transaction (never through a
// second pool connection while holding one: PITFALLS 23).
func fault(ctx context.Context, tx pgx.Tx, name string) bool {
	var on bool
	_ = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM faults WHERE name = $1)`, name).Scan(&on)
	return on
}

func (w *world) setFault(name string, on bool) {
	q := `DELETE FROM faults WHERE name = $1`
	if on {
		q = `INSERT INTO faults VALUES ($1) ON CONFLICT DO NOTHING`
	}
	_, err := w.pool.Exec(w.ctx, q, name)
	testkit.Must(w.t, err, "fault %s", name)
}

func effect(ctx context.Context, tx pgx.Tx, cmd *saga.Command, what string) error {
	_, err := tx.Exec(ctx, `INSERT INTO effects (saga_id, what) VALUES ($1, $2)`, cmd.SagaID, what)
	return err
}

// testRuntime is the saga.Runtime of the tests: the world's database (or
// another pool on it), writer, codec, Kafka and registry. Attach only
// counts: the tests run each part themselves, with their own relay.
type testRuntime struct {
	w          *world
	pool       *pgxpool.Pool
	registry   srclient.ISchemaRegistryClient // nil: the world's
	registerer prometheus.Registerer
	attached   atomic.Int32
}

func (r *testRuntime) Pool() *pgxpool.Pool    { return r.pool }
func (r *testRuntime) Writer() *outbox.Writer { return r.w.writer }
func (r *testRuntime) Codec() *outbox.Codec   { return r.w.codec }
func (r *testRuntime) Brokers() []string      { return r.w.brokers }
func (r *testRuntime) Registry() srclient.ISchemaRegistryClient {
	if r.registry != nil {
		return r.registry
	}
	return r.w.registryClient()
}
func (r *testRuntime) Logger() *slog.Logger              { return testLogger(r.w.t) }
func (r *testRuntime) Registerer() prometheus.Registerer { return r.registerer }
func (r *testRuntime) Attach(string, func(context.Context) error) error {
	r.attached.Add(1)
	return nil
}

// runtime is a Runtime on pool (nil: the world's pool).
func (w *world) runtime(pool *pgxpool.Pool) *testRuntime {
	if pool == nil {
		pool = w.pool
	}
	return &testRuntime{w: w, pool: pool}
}

// catalog and users are the participants, with real business rules: a
// conditional UPDATE refuses to oversell or overdraw.
func (w *world) participants(group string) (catalog, users *saga.Participant) {
	w.t.Helper()
	mk := func(name, topic string, handlers ...saga.Handler) *saga.Participant {
		p, err := saga.NewParticipant(w.runtime(nil), saga.ParticipantConfig{Name: name, CommandTopic: topic,
			ConsumerGroup: name + "-" + group, Handlers: handlers})
		testkit.Must(w.t, err, "participant %s", name)
		return p
	}
	catalog = mk("catalog", catalogTopic,
		saga.HandleCommand("reserve_stock", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command, r reserveStock) (any, error) {
			tag, err := tx.Exec(ctx, `UPDATE stock SET qty = qty - $2 WHERE item = $1 AND qty >= $2`, r.Item, r.Qty)
			if err != nil {
				return nil, err
			}
			if tag.RowsAffected() == 0 {
				return nil, saga.Reject("out of stock")
			}
			if err := effect(ctx, tx, cmd, "reserve"); err != nil {
				return nil, err
			}
			return saga.Payload{Type: "test.catalog.StockReserved", Value: stockReserved{ReservationID: "res-" + cmd.SagaID.String()[:8]}}, nil
		}),
		saga.HandleCommand("release_stock", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command, r reserveStock) (any, error) {
			if fault(ctx, tx, "release_fails") {
				return nil, fmt.Errorf("release: warehouse system down")
			}
			if _, err := tx.Exec(ctx, `UPDATE stock SET qty = qty + $2 WHERE item = $1`, r.Item, r.Qty); err != nil {
				return nil, err
			}
			return nil, effect(ctx, tx, cmd, "release")
		}))
	users = mk("users", usersTopic,
		saga.HandleCommand("debit_credit", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command, d debitCredit) (any, error) {
			if fault(ctx, tx, "debit_fails") {
				return nil, fmt.Errorf("debit: ledger down")
			}
			tag, err := tx.Exec(ctx, `UPDATE credit SET balance = balance - $2 WHERE username = $1 AND balance >= $2`, d.User, d.Amount)
			if err != nil {
				return nil, err
			}
			if tag.RowsAffected() == 0 {
				return nil, saga.Reject("insufficient credit")
			}
			return nil, effect(ctx, tx, cmd, "debit")
		}),
		saga.HandleCommand("refund_credit", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command, d debitCredit) (any, error) {
			if _, err := tx.Exec(ctx, `UPDATE credit SET balance = balance + $2 WHERE username = $1`, d.User, d.Amount); err != nil {
				return nil, err
			}
			return nil, effect(ctx, tx, cmd, "refund")
		}))
	return catalog, users
}

// runParticipants starts catalog and users consuming with the given group
// suffix.
func (w *world) runParticipants(group string) {
	catalog, users := w.participants(group)
	w.goRun("catalog", catalog.Run)
	w.goRun("users", users.Run)
}

// seed sets stock and credit.
func (w *world) seed(item string, qty int, user string, balance int) {
	_, err := w.pool.Exec(w.ctx, `INSERT INTO stock VALUES ($1, $2) ON CONFLICT (item) DO UPDATE SET qty = excluded.qty;
		`, item, qty)
	testkit.Must(w.t, err, "seed stock")
	_, err = w.pool.Exec(w.ctx, `INSERT INTO credit VALUES ($1, $2) ON CONFLICT (username) DO UPDATE SET balance = excluded.balance`, user, balance)
	testkit.Must(w.t, err, "seed credit")
}

// placeOrder inserts an order and starts its saga in the same transaction.
func (w *world) placeOrder(o *saga.Orchestrator[order], data order) string {
	w.t.Helper()
	var id string
	err := pgx.BeginFunc(w.ctx, w.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(w.ctx, `INSERT INTO orders (id, item) VALUES ($1, $2)`, data.OrderID, data.Item); err != nil {
			return err
		}
		sid, err := o.Start(w.ctx, tx, data)
		id = sid.String()
		return err
	})
	testkit.Must(w.t, err, "place order %s", data.OrderID)
	return id
}

// waitFinished waits until every saga has a final status and returns the
// statuses by saga ID.
func (w *world) waitFinished(ids []string, timeout time.Duration) map[string]saga.Status {
	w.t.Helper()
	got := map[string]saga.Status{}
	testkit.Eventually(w.t, timeout, fmt.Sprintf("%d sagas to finish", len(ids)), func() bool {
		rows, err := w.pool.Query(w.ctx, `SELECT id::text, status FROM sagabox.sagas WHERE id::text = ANY($1)`, ids)
		if err != nil {
			return false
		}
		n := 0
		for rows.Next() {
			var id, st string
			_ = rows.Scan(&id, &st)
			got[id] = saga.Status(st)
			if saga.Status(st).Finished() {
				n++
			}
		}
		rows.Close()
		return n == len(ids)
	})
	return got
}

// effects returns each saga's effects in the order they were applied.
func (w *world) effects() map[string][]string {
	w.t.Helper()
	rows, err := w.pool.Query(w.ctx, `SELECT saga_id::text, what FROM effects ORDER BY n`)
	testkit.Must(w.t, err, "effects")
	out := map[string][]string{}
	for rows.Next() {
		var id, what string
		testkit.Must(w.t, rows.Scan(&id, &what), "scan")
		out[id] = append(out[id], what)
	}
	testkit.Must(w.t, rows.Err(), "effects")
	return out
}

// commands counts the commands written to the outbox per saga, step and
// attempt, to prove no state change was applied twice.
func (w *world) duplicateCommands() int {
	w.t.Helper()
	var dup int
	var total int
	err := w.pool.QueryRow(w.ctx, `WITH m AS (
			SELECT saga_id, value, headers FROM sagabox.outbox WHERE headers ? $1
			UNION ALL SELECT saga_id, value, headers FROM sagabox.outbox_archive WHERE headers ? $1)
		SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM (SELECT 1 FROM m GROUP BY saga_id, value, headers HAVING count(*) > 1) d)`,
		saga.HeaderCommand).Scan(&total, &dup)
	if total == 0 {
		w.t.Fatal("no commands found in the outbox or its archive: the duplicate check would be vacuous")
	}
	testkit.Must(w.t, err, "duplicate commands")
	return dup
}
