package saga_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/twmb/franz-go/pkg/kgo"
)

// counter sums a metric's samples with the given label values.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	testkit.Must(t, err, "gather")
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// checkExactlyOnce fails the test when a saga's effects are lost, doubled
// or out of order.
func checkExactlyOnce(t *testing.T, w *world, ids []string, want []string) {
	t.Helper()
	eff := w.effects()
	lost, dup, order := 0, 0, 0
	for _, id := range ids {
		e := eff[id]
		switch {
		case len(e) < len(want):
			lost++
		case len(e) > len(want):
			dup++
		case !slices.Equal(e, want):
			order++
		}
	}
	if lost+dup+order > 0 {
		t.Fatalf("effects over %d sagas: %d lost, %d duplicated, %d out of order", len(ids), lost, dup, order)
	}
	if d := w.duplicateCommands(); d != 0 {
		t.Fatalf("%d commands written twice (a state change applied twice)", d)
	}
}

// Invariant: every command and every reply delivered twice (two consumer
// groups of each participant, so each command is processed twice and each
// reply sent twice) still gives one effect per step, and the duplicate
// replies are ignored.
func TestDuplicateCommandsAndRepliesHaveOneEffect(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 1000, "ann", 100000)
	w.runParticipants("g1")
	w.runParticipants("g2")
	reg := prometheus.NewRegistry()
	o := w.orchestrator(orderDefinition(tuning{}), func(c *saga.Config, rt *testRuntime) { rt.registerer = reg })
	w.startOrchestrator(o)
	const n = 20
	var ids []string
	for i := range n {
		ids = append(ids, w.placeOrder(o, order{OrderID: fmt.Sprintf("o%d", i), Item: "book", Qty: 1, User: "ann", Amount: 1}))
	}
	for id, st := range w.waitFinished(ids, 60*time.Second) {
		if st != saga.StatusSucceeded {
			t.Errorf("saga %s: %s", id, st)
		}
	}
	// Both replies of each step reach the orchestrator: wait for the second
	// copies to be counted as ignored.
	testkit.Eventually(t, 30*time.Second, "the duplicate replies to be ignored", func() bool {
		return counter(t, reg, "sagabox_saga_replies_ignored_total", nil) >= 2*n
	})
	checkExactlyOnce(t, w, ids, []string{"reserve", "debit"})
	var stock, balance int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT (SELECT qty FROM stock), (SELECT balance FROM credit)`).Scan(&stock, &balance), "totals")
	if stock != 1000-n || balance != 100000-n {
		t.Fatalf("stock %d balance %d, want %d %d", stock, balance, 1000-n, 100000-n)
	}
	if got := counter(t, reg, "sagabox_saga_finished_total", map[string]string{"status": "succeeded"}); got != n {
		t.Fatalf("finished_total{succeeded} = %v, want %d", got, n)
	}
}

// silentDefinition has a fraud check whose participant never answers: it
// times out after timeout, whatever the machine's speed. The stock
// reservation, which is answered, has a generous timeout.
func silentDefinition(timeout time.Duration) *saga.Definition[order] {
	retry := saga.RetryPolicy{MaxAttempts: 2, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	return saga.MustDefinition("create_order", 4,
		saga.Step[order]{
			Name: "reserve_stock",
			Invoke: &saga.Invocation[order]{Topic: catalogTopic, Command: "reserve_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Compensate: &saga.Invocation[order]{Topic: catalogTopic, Command: "release_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Timeout: 2 * time.Minute, Retry: retry,
		},
		saga.Step[order]{
			// A read-only check: nothing to compensate.
			Name:    "fraud_check",
			Invoke:  &saga.Invocation[order]{Topic: "fraud.commands", Command: "check"},
			Timeout: timeout, Retry: retry,
		},
	)
}

// Invariant: a participant that never answers makes its step time out
// after its retries, and the saga compensates, also when the orchestrator
// that was waiting is gone and another one starts later: the deadline
// lives in the database.
func TestParticipantThatNeverAnswersTimesOutAcrossRestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.seed("book", 10, "ann", 100)
	w.runParticipants("g")
	const timeout = 300 * time.Millisecond
	def := silentDefinition(timeout)
	// A never polls its timers after the first (empty) poll, however long
	// the test takes to stop it: the deadline of the attempt A started can
	// only be fired by B, after the restart.
	a := w.orchestrator(def, func(c *saga.Config, _ *testRuntime) { c.PollInterval = time.Hour })
	stopA := w.startOrchestrator(a)
	id := w.placeOrder(a, order{OrderID: "o1", Item: "book", Qty: 3, User: "ann", Amount: 1})
	sid := uuid.MustParse(id)
	var info *saga.Info
	testkit.Eventually(t, 30*time.Second, "the saga to wait on the fraud check", func() bool {
		var err error
		info, err = saga.NewAdmin(w.pool).Get(w.ctx, sid)
		return err == nil && info.Step == 1 && info.Deadline != nil
	})
	stopA() // the orchestrator goes away while the saga waits
	if info, err := saga.NewAdmin(w.pool).Get(w.ctx, sid); err != nil || info.Status != saga.StatusRunning ||
		info.Deadline == nil || info.Attempt != 1 {
		t.Fatalf("waiting saga after A stopped: %+v %v", info, err)
	}
	b := w.orchestrator(def, nil)
	w.startOrchestrator(b)
	st := w.waitFinished([]string{id}, 30*time.Second)[id]
	if st != saga.StatusCompensated {
		t.Fatalf("status %s, want compensated", st)
	}
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, sid)
	testkit.Must(t, err, "get")
	want := []string{"reserve_stock:succeeded", "fraud_check:timed_out", "fraud_check:timed_out", "undo reserve_stock:succeeded"}
	if got := trace(info); !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}
	for _, a := range info.History {
		if a.Outcome == saga.OutcomeTimedOut && a.FinishedAt.Sub(a.StartedAt) < timeout {
			t.Errorf("attempt timed out early: %+v", a)
		}
	}
	checkExactlyOnce(t, w, []string{id}, []string{"reserve", "release"})
	var stock int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT qty FROM stock`).Scan(&stock), "stock")
	if stock != 10 {
		t.Fatalf("stock %d, want 10", stock)
	}
}

// crashablePool is a pool whose connections a test can kill, to crash an
// orchestrator in the middle of its transactions.
func crashablePool(t *testing.T, w *world, name string) (*pgxpool.Pool, func()) {
	cfg, err := pgxpool.ParseConfig(w.db.URL)
	testkit.Must(t, err, "pool config")
	cfg.ConnConfig.RuntimeParams["application_name"] = name
	pool, err := pgxpool.NewWithConfig(w.ctx, cfg)
	testkit.Must(t, err, "pool")
	t.Cleanup(pool.Close)
	return pool, func() {
		_, err := w.pool.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, name)
		testkit.Must(t, err, "kill %s", name)
	}
}

// Invariant: an orchestrator killed mid-saga (its database connections cut
// while it works, its consumer offsets not committed) loses nothing: a new
// instance finishes every saga, and every effect happens once.
func TestOrchestratorKilledMidSagaAndRestarted(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 1000, "ann", 100000)
	w.runParticipants("g")
	def := orderDefinition(tuning{Timeout: 5 * time.Second})
	poolA, kill := crashablePool(t, w, "orchestrator_a")
	a := w.orchestrator(def, func(c *saga.Config, rt *testRuntime) { rt.pool = poolA })
	stopA := w.startOrchestrator(a)
	const n = 40
	var ids []string
	for i := range n {
		ids = append(ids, w.placeOrder(a, order{OrderID: fmt.Sprintf("o%d", i), Item: "book", Qty: 1, User: "ann", Amount: 1}))
	}
	testkit.Eventually(t, 30*time.Second, "some sagas to be under way", func() bool {
		var moved int
		_ = w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.sagas WHERE step > 0`).Scan(&moved)
		return moved > 0
	})
	kill()
	stopA()
	var done int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.sagas WHERE status = 'succeeded'`).Scan(&done), "count")
	t.Logf("%d of %d sagas had finished when the orchestrator died", done, n)

	b := w.orchestrator(def, nil)
	w.startOrchestrator(b)
	for id, st := range w.waitFinished(ids, 60*time.Second) {
		if st != saga.StatusSucceeded {
			t.Errorf("saga %s: %s", id, st)
		}
	}
	checkExactlyOnce(t, w, ids, []string{"reserve", "debit"})
}

// Invariant: two orchestrators consuming every reply (two consumer groups)
// and firing timers on the same sagas at once never apply a state change
// twice or lose one: each reply is used exactly once, each saga finishes
// once. They share one Prometheus registerer without panicking.
func TestTwoOrchestratorsOnTheSameSagas(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 1000, "ann", 100000)
	w.seed("vetoed", 1000, "poor", 0)
	w.runParticipants("g")
	reg := prometheus.NewRegistry()
	def := orderDefinition(tuning{Timeout: 10 * time.Second})
	a := w.orchestrator(def, func(c *saga.Config, rt *testRuntime) { rt.registerer = reg; c.ConsumerGroup = "orch-a" })
	b := w.orchestrator(def, func(c *saga.Config, rt *testRuntime) { rt.registerer = reg; c.ConsumerGroup = "orch-b" })
	w.startOrchestrator(a)
	w.startOrchestrator(b)
	const n = 30
	var ids, failing []string
	for i := range n {
		data := order{OrderID: fmt.Sprintf("o%d", i), Item: "book", Qty: 1, User: "ann", Amount: 1}
		if i%3 == 0 {
			data.User = "poor" // debit rejected: compensates
		}
		id := w.placeOrder([]*saga.Orchestrator[order]{a, b}[i%2], data)
		ids = append(ids, id)
		if i%3 == 0 {
			failing = append(failing, id)
		}
	}
	statuses := w.waitFinished(ids, 60*time.Second)
	for _, id := range ids {
		want := saga.StatusSucceeded
		if slices.Contains(failing, id) {
			want = saga.StatusCompensated
		}
		if statuses[id] != want {
			t.Errorf("saga %s: %s, want %s", id, statuses[id], want)
		}
	}
	var ok []string
	for _, id := range ids {
		if !slices.Contains(failing, id) {
			ok = append(ok, id)
		}
	}
	checkExactlyOnce(t, w, ok, []string{"reserve", "debit"})
	checkExactlyOnce(t, w, failing, []string{"reserve", "release"})
	// Replies: 2 per succeeded saga, 3 per compensated one (reserve, debit
	// rejected, release); each seen by both orchestrators, used by one.
	replies := float64(2*len(ok) + 3*len(failing))
	testkit.Eventually(t, 30*time.Second, "every reply's second copy to be ignored", func() bool {
		return counter(t, reg, "sagabox_saga_replies_ignored_total", nil) >= replies
	})
	if got := counter(t, reg, "sagabox_saga_replies_ignored_total", nil); got != replies {
		t.Fatalf("ignored %v replies, want exactly %v (one copy of each)", got, replies)
	}
	if s, c := counter(t, reg, "sagabox_saga_finished_total", map[string]string{"status": "succeeded"}),
		counter(t, reg, "sagabox_saga_finished_total", map[string]string{"status": "compensated"}); s != float64(len(ok)) || c != float64(len(failing)) {
		t.Fatalf("finished: %v succeeded, %v compensated; want %d, %d", s, c, len(ok), len(failing))
	}
	var versions int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.sagas
		WHERE version <> CASE status WHEN 'succeeded' THEN 3 ELSE 4 END`).Scan(&versions), "versions")
	if versions != 0 {
		t.Fatalf("%d sagas changed state more or fewer times than their replies", versions)
	}
}

// Invariant: a compensation that keeps failing ends the saga failed (never
// compensated), listed for operators; an operator retry once the cause is
// fixed finishes the compensation.
func TestCompensationThatKeepsFailingEndsFailed(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.seed("book", 10, "poor", 0)
	w.setFault("release_fails", true)
	w.runParticipants("g")
	o := w.orchestrator(orderDefinition(tuning{CompAttempt: 3}), nil)
	w.startOrchestrator(o)
	id := w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 4, User: "poor", Amount: 5})
	if st := w.waitFinished([]string{id}, 30*time.Second)[id]; st != saga.StatusFailed {
		t.Fatalf("status %s, want failed", st)
	}
	page, err := saga.NewAdmin(w.pool).List(w.ctx, saga.ListOptions{Failed: true})
	list := page.Sagas
	testkit.Must(t, err, "list")
	if len(list) != 1 || list[0].ID.String() != id || !strings.Contains(list[0].LastError, "warehouse system down") {
		t.Fatalf("failed list: %+v", list)
	}
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, list[0].ID)
	testkit.Must(t, err, "get")
	want := []string{"reserve_stock:succeeded", "debit_credit:rejected", "undo reserve_stock:error", "undo reserve_stock:error", "undo reserve_stock:error"}
	if got := trace(info); !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}
	var stock int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT qty FROM stock`).Scan(&stock), "stock")
	if stock != 6 {
		t.Fatalf("stock %d: the failed release changed something", stock)
	}

	w.setFault("release_fails", false)
	testkit.Must(t, o.Retry(w.ctx, list[0].ID), "retry")
	if st := w.waitFinished([]string{id}, 30*time.Second)[id]; st != saga.StatusCompensated {
		t.Fatalf("after retry: %s, want compensated", st)
	}
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT qty FROM stock`).Scan(&stock), "stock")
	if stock != 10 {
		t.Fatalf("stock %d after compensation, want 10", stock)
	}
	page, err = saga.NewAdmin(w.pool).List(w.ctx, saga.ListOptions{Failed: true})
	list = page.Sagas
	testkit.Must(t, err, "list")
	if len(list) != 0 {
		t.Fatalf("still listed as failed: %+v", list)
	}
}

// flakyRegistry is a proxy in front of srfake that answers 503 while down.
func flakyRegistry(t *testing.T, target string) (url string, down *atomic.Bool, refused *atomic.Int64) {
	u, err := urlParse(target)
	testkit.Must(t, err, "url")
	down, refused = &atomic.Bool{}, &atomic.Int64{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if down.Load() {
			refused.Add(1)
			http.Error(rw, "registry down", http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(rw, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, down, refused
}

func urlParse(s string) (*url.URL, error) { return url.Parse(s) }

// Invariant: replies that are not Avro or carry an unknown schema ID go to
// the dead-letter topic with the reason and do not block their partition;
// a reply whose schema cannot be fetched because the registry is down is
// retried, not dead-lettered, and applied once the registry is back.
func TestUndecodableRepliesAreDeadLetteredRegistryOutageIsRetried(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 1) // one partition: a stuck record would block everything
	w.seed("book", 10, "ann", 100)
	w.runParticipants("g")
	regURL, down, refused := flakyRegistry(t, w.registry.URL())
	o := w.orchestrator(orderDefinition(tuning{}), func(c *saga.Config, rt *testRuntime) { rt.registry = srclient.NewSchemaRegistryClient(regURL) })

	producer, err := kgo.NewClient(kgo.SeedBrokers(w.brokers...), kgo.AllowAutoTopicCreation())
	testkit.Must(t, err, "producer")
	defer producer.Close()
	unknownID := []byte{0, 0, 0, 0x27, 0x0f, 1, 2, 3}
	for _, v := range [][]byte{[]byte(`{"json":"not avro"}`), unknownID} {
		testkit.Must(t, producer.ProduceSync(w.ctx, &kgo.Record{Topic: replyTopic, Key: []byte("x"), Value: v}).FirstErr(), "produce")
	}
	stopO := w.startOrchestrator(o)
	id := w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 1, User: "ann", Amount: 1})
	if st := w.waitFinished([]string{id}, 30*time.Second)[id]; st != saga.StatusSucceeded {
		t.Fatalf("status %s: the bad records blocked the partition?", st)
	}
	dlq := testkit.ReadAll(t, w.brokers, replyTopic+".dlq", 2, 20*time.Second)
	if len(dlq) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dlq))
	}
	dec := outbox.NewDecoder(w.registryClient(), nil)
	var reasons []string
	for _, r := range dlq {
		var v map[string]any
		_, err := dec.Decode(r.Value, &v)
		testkit.Must(t, err, "decode dead letter")
		reasons = append(reasons, v["reason"].(string))
	}
	if !strings.Contains(reasons[0], "not in the Confluent Avro wire format") || !strings.Contains(reasons[1], "does not know this schema ID") {
		t.Fatalf("reasons %q", reasons)
	}

	// Now the registry goes down, and the orchestrator restarts: the new
	// instance has no schema cached.
	stopO()
	down.Store(true)
	o2 := w.orchestrator(orderDefinition(tuning{}), func(c *saga.Config, rt *testRuntime) { rt.registry = srclient.NewSchemaRegistryClient(regURL) })
	w.startOrchestrator(o2)
	before := refused.Load()
	id2 := w.placeOrder(o2, order{OrderID: "o2", Item: "book", Qty: 1, User: "ann", Amount: 1})
	testkit.Eventually(t, 30*time.Second, "the orchestrator to retry the registry", func() bool { return refused.Load() > before+3 })
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(id2))
	testkit.Must(t, err, "get")
	if info.Status.Finished() {
		t.Fatalf("saga finished while no reply could be decoded: %s", info.Status)
	}
	down.Store(false)
	if st := w.waitFinished([]string{id2}, 30*time.Second)[id2]; st != saga.StatusSucceeded {
		t.Fatalf("status %s after the registry came back", st)
	}
	// None of the saga's replies was dead-lettered during the outage.
	for _, r := range testkit.ReadAll(t, w.brokers, replyTopic+".dlq", 3, 2*time.Second) {
		if r.Key == id2 {
			t.Fatalf("a reply was dead-lettered while the registry was down: %v", r.Headers)
		}
	}
}

// Invariant: with step timeouts as short as the participants' reply time,
// replies and timeouts for the same saga race all the time (late replies,
// retried commands, compensations of steps whose outcome is unknown), and
// still every saga ends succeeded or compensated with its effects netting
// out: stock and credit match the succeeded sagas exactly.
func TestRepliesRacingTimeouts(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 10000, "ann", 10000)
	w.runParticipants("g")
	reg := prometheus.NewRegistry()
	def := orderDefinition(tuning{Timeout: 40 * time.Millisecond, Attempts: 4, CompTimeout: 10 * time.Second})
	o := w.orchestrator(def, func(c *saga.Config, rt *testRuntime) { rt.registerer = reg; c.PollInterval = 5 * time.Millisecond })
	w.startOrchestrator(o)
	const n = 30
	var ids []string
	for i := range n {
		ids = append(ids, w.placeOrder(o, order{OrderID: fmt.Sprintf("o%d", i), Item: "book", Qty: 1, User: "ann", Amount: 1}))
	}
	statuses := w.waitFinished(ids, 90*time.Second)
	eff := w.effects()
	succeeded, compensated := 0, 0
	for _, id := range ids {
		count := map[string]int{}
		for _, e := range eff[id] {
			count[e]++
		}
		switch statuses[id] {
		case saga.StatusSucceeded:
			succeeded++
			if count["reserve"] != 1 || count["debit"] != 1 || count["release"]+count["refund"] != 0 {
				t.Errorf("succeeded saga %s: effects %v", id, eff[id])
			}
		case saga.StatusCompensated:
			compensated++
			if count["reserve"] > 1 || count["debit"] > 1 || count["reserve"] != count["release"] || count["debit"] != count["refund"] {
				t.Errorf("compensated saga %s: effects %v do not net out", id, eff[id])
			}
		default:
			t.Errorf("saga %s: %s", id, statuses[id])
		}
	}
	var stock, balance int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT (SELECT qty FROM stock), (SELECT balance FROM credit)`).Scan(&stock, &balance), "totals")
	if stock != 10000-succeeded || balance != 10000-succeeded {
		t.Fatalf("stock %d, balance %d; want %d each for %d succeeded sagas", stock, balance, 10000-succeeded, succeeded)
	}
	ignored := counter(t, reg, "sagabox_saga_replies_ignored_total", nil)
	t.Logf("%d succeeded, %d compensated, %v late replies ignored", succeeded, compensated, ignored)
	if ignored == 0 {
		t.Fatal("no reply arrived late: the test did not make replies race timeouts")
	}
}
