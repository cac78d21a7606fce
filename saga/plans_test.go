package saga_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// PITFALLS (prepared statements): pgx prepares every statement, and after
// five executions Postgres may settle on a generic plan, costed with the
// statistics of that moment, and keep it. A service that starts on empty
// tables settles while they are small, when a sequential scan looks as good
// as an index; as the tables grow, such a plan reads every row, on every
// command, reply or timer poll. The hot lookups are written so that every
// plan of them uses the primary key or a timer index: these tests let the
// plans settle on small tables, grow the tables, and count the tuples the
// next calls read.

// onePool is a pool of one connection, so that the statements a test warms
// up are the ones it measures; tracer, when not nil, sees every statement.
func (w *world) onePool(tracer pgx.QueryTracer) *pgxpool.Pool {
	w.t.Helper()
	cfg, err := pgxpool.ParseConfig(w.db.URL)
	testkit.Must(w.t, err, "pool config")
	cfg.ConnConfig.Tracer = tracer
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(w.ctx, cfg)
	testkit.Must(w.t, err, "pool")
	w.t.Cleanup(pool.Close)
	return pool
}

// tuplesRead is how many tuples scans of table have read so far, through
// any index or sequentially, as the statistics know after pool's
// connection flushed its own.
func (w *world) tuplesRead(pool *pgxpool.Pool, table string) int64 {
	w.t.Helper()
	_, err := pool.Exec(w.ctx, `SELECT pg_stat_force_next_flush()`)
	testkit.Must(w.t, err, "flush stats")
	var n int64
	testkit.Must(w.t, pool.QueryRow(w.ctx, `SELECT pg_stat_clear_snapshot()`).Scan(new(any)), "clear snapshot")
	testkit.Must(w.t, pool.QueryRow(w.ctx, `
		SELECT coalesce(seq_tup_read, 0) + coalesce((SELECT sum(idx_tup_read) FROM pg_stat_user_indexes i WHERE i.relid = t.relid), 0)
		FROM pg_stat_user_tables t WHERE schemaname = 'sagabox' AND relname = $1`, table).Scan(&n), "tuples read")
	return n
}

func TestInboxLookupStaysOnThePrimaryKeyAsTheInboxGrows(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	pool := w.onePool(nil)
	p := w.participant("catalog", pool,
		saga.HandleFunc("reserve_stock", func(context.Context, pgx.Tx, *saga.Command) (any, error) { return nil, nil }))
	for range 8 { // past the plan cache's five custom plans
		testkit.Must(t, p.Process(w.ctx, command(uuid.New(), "reserve_stock", 1, false)), "process")
	}
	_, err := w.pool.Exec(w.ctx, `INSERT INTO sagabox.saga_inbox (consumer, key, outcome)
		SELECT 'catalog', 'old/' || i, 'SUCCESS' FROM generate_series(1, 20000) AS i`)
	testkit.Must(t, err, "grow the inbox")
	before := w.tuplesRead(pool, "saga_inbox")
	for range 5 {
		testkit.Must(t, p.Process(w.ctx, command(uuid.New(), "reserve_stock", 1, false)), "process")
	}
	if read := w.tuplesRead(pool, "saga_inbox") - before; read > 100 {
		t.Fatalf("5 commands read %d inbox tuples with 20,000 entries in the inbox: the lookup scans the consumer's entries", read)
	}
}

func TestTimerPollStaysOnItsIndexAsSagasAccumulate(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	polls := &pollCounter{}
	pool := w.onePool(polls)
	o := w.orchestrator(orderDefinition(tuning{}), func(c *saga.Config, rt *testRuntime) {
		rt.pool = pool
		c.PollInterval = 5 * time.Millisecond
	})
	runTimers := func() (stop func()) {
		ctx, cancel := context.WithCancel(w.ctx)
		done := make(chan struct{})
		go func() { defer close(done); o.RunTimers(ctx) }()
		return func() { cancel(); <-done }
	}
	// Counted polls, not a time window: a busy machine polls less often.
	waitPolls := func(n int64, what string) {
		start := polls.n.Load()
		testkit.Eventually(t, 2*time.Minute, what, func() bool { return polls.n.Load()-start >= n })
	}
	stop := runTimers()
	waitPolls(40, "dozens of polls on an empty table") // past the plan cache's five custom plans
	_, err := w.pool.Exec(w.ctx, `INSERT INTO sagabox.sagas (id, saga_type, definition_version, status, step, attempt, data, finished_at)
		SELECT gen_random_uuid(), 'create_order', 3, 'succeeded', 3, 1, '{}', now() FROM generate_series(1, 20000)`)
	testkit.Must(t, err, "finished sagas")
	waitPolls(4, "polls on the grown table")
	stop()
	// 200 poll queries (deadline and retry, two workers). A scan of the
	// table in each would read millions of tuples; what the index walks
	// read (and the count of sagas in flight that RunTimers makes when it
	// starts) stays far below.
	before := w.tuplesRead(pool, "sagas")
	stop = runTimers()
	waitPolls(200, "200 timer poll queries")
	stop()
	if read := w.tuplesRead(pool, "sagas") - before; read > 100000 {
		t.Fatalf("%d timer poll queries read %d saga tuples with 20,000 finished sagas: they scan the table", polls.n.Load(), read)
	}
}

// pollCounter counts the timer poll's queries (loadDue) a pool runs.
type pollCounter struct{ n atomic.Int64 }

func (c *pollCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.Contains(data.SQL, "FOR UPDATE SKIP LOCKED") && strings.Contains(data.SQL, "ORDER BY") {
		c.n.Add(1)
	}
	return ctx
}

func (c *pollCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func TestReplyBatchLoadsStayOnThePrimaryKeyAsSagasAccumulate(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	pool := w.onePool(nil)
	o := w.orchestrator(orderDefinition(tuning{}), func(c *saga.Config, rt *testRuntime) { rt.pool = pool })
	_, payload, err := testCodec().Encode("test.catalog.StockReserved", stockReserved{ReservationID: "r"})
	testkit.Must(t, err, "payload")
	reply := func(id string) *saga.Reply {
		return &saga.Reply{SagaID: uuid.MustParse(id), Step: 0, Attempt: 1, Outcome: saga.OutcomeSucceeded,
			PayloadType: "test.catalog.StockReserved", Payload: payload}
	}
	apply := func(n int, label string) {
		for i := range n { // batches of two: the shared-transaction path
			a := w.placeOrder(o, order{OrderID: fmt.Sprintf("%s-%da", label, i), Item: "book", Qty: 1})
			b := w.placeOrder(o, order{OrderID: fmt.Sprintf("%s-%db", label, i), Item: "book", Qty: 1})
			testkit.Must(t, errors.Join(o.HandleReplies(w.ctx, []*saga.Reply{reply(a), reply(b)})...), "replies")
		}
	}
	apply(8, "small")
	_, err = w.pool.Exec(w.ctx, `INSERT INTO sagabox.sagas (id, saga_type, definition_version, status, step, attempt, data, finished_at)
		SELECT gen_random_uuid(), 'create_order', 3, 'succeeded', 3, 1, '{}', now() FROM generate_series(1, 20000)`)
	testkit.Must(t, err, "finished sagas")
	before := w.tuplesRead(pool, "sagas")
	apply(5, "large")
	if read := w.tuplesRead(pool, "sagas") - before; read > 1000 {
		t.Fatalf("5 reply batches read %d saga tuples with 20,000 sagas in the table: the load scans it", read)
	}
}
