package saga_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// paidOrderDefinition reserves stock, passes a (local) pivot, then debits
// credit, a retriable step with one short attempt: a saga whose users
// participant is down ends failed, and an operator retry once it is back
// finishes it.
func paidOrderDefinition() *saga.Definition[order] {
	retry := saga.RetryPolicy{MaxAttempts: 1}
	return saga.MustDefinition("paid_order", 1,
		saga.Step[order]{
			Name: "reserve_stock",
			Invoke: &saga.Invocation[order]{Topic: catalogTopic, Command: "reserve_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Compensate: &saga.Invocation[order]{Topic: catalogTopic, Command: "release_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Timeout: 20 * time.Second, Retry: retry,
		},
		saga.Step[order]{Name: "approve", Kind: saga.Pivot,
			Local: func(context.Context, pgx.Tx, *order) error { return nil }},
		saga.Step[order]{Name: "debit_credit", Kind: saga.Retriable,
			Invoke: &saga.Invocation[order]{Topic: usersTopic, Command: "debit_credit", Type: "test.users.DebitCredit",
				Payload: func(o *order) (any, error) { return debitCredit{User: o.User, Amount: o.Amount}, nil }},
			Timeout: 20 * time.Second, Retry: retry,
		},
	)
}

func actions(info *saga.Info) []string {
	var out []string
	for _, a := range info.Actions {
		out = append(out, fmt.Sprintf("%s:%s:%s:%s", a.Action, a.Result, a.Actor, a.Reason))
	}
	return out
}

func (w *world) waitStatus(id uuid.UUID, want saga.Status) *saga.Info {
	w.t.Helper()
	var info *saga.Info
	testkit.Eventually(w.t, 30*time.Second, fmt.Sprintf("saga %s to be %s", id, want), func() bool {
		var err error
		info, err = saga.NewAdmin(w.pool).Get(w.ctx, id)
		return err == nil && info.Status == want && info.Request == nil
	})
	return info
}

// Admin.Retry, without the definition's Go type, of a failed saga: a
// running orchestrator carries it out and the saga succeeds; the history
// says who asked and why.
func TestAdminRetryOfAFailedSagaSucceeds(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.seed("book", 10, "rich", 100)
	// The users participant runs from the start (a retry must not race its
	// consumer group's first join on a busy machine); its ledger fails
	// until the operator has fixed it.
	w.setFault("debit_fails", true)
	w.runParticipants("g")
	o := w.orchestrator(paidOrderDefinition(), nil)
	w.startOrchestrator(o)
	id := uuid.MustParse(w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 1, User: "rich", Amount: 5}))
	w.waitStatus(id, saga.StatusFailed) // debit_credit failed: the ledger is down

	w.setFault("debit_fails", false)
	admin := saga.NewAdmin(w.pool)
	testkit.Must(t, admin.Retry(w.ctx, id, saga.ActionOptions{Actor: "ops", Reason: "users is back"}), "retry")
	info := w.waitStatus(id, saga.StatusSucceeded)
	// The retry's attempt 1 reuses the history row of the failed attempt 1
	// (saga_steps' key has no retry round): the error is overwritten.
	if got, want := trace(info), []string{"reserve_stock:succeeded", "approve:succeeded", "debit_credit:succeeded"}; !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}
	if got, want := actions(info), []string{"retry:requested:ops:users is back", "retry:done:ops:users is back"}; !slices.Equal(got, want) {
		t.Fatalf("actions %v, want %v", got, want)
	}
	var retryAt *time.Time
	var debited int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT next_retry_at, (SELECT 100 - balance FROM credit) FROM sagabox.sagas WHERE id = $1`, id).Scan(&retryAt, &debited), "row")
	if retryAt != nil || debited != 5 {
		t.Fatalf("succeeded saga due at %v, debited %d (want nil, 5)", retryAt, debited)
	}
}

// Admin.Abort of a running saga compensates it, including the step in
// flight; and a request made while no orchestrator runs waits in the
// database for one.
func TestAdminAbortWaitsForAnOrchestratorAndCompensates(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.seed("book", 10, "rich", 100)
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	id := uuid.MustParse(w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 1, User: "rich", Amount: 5}))
	admin := saga.NewAdmin(w.pool)
	testkit.Must(t, admin.Abort(w.ctx, id, "customer called", saga.ActionOptions{Actor: "alice"}), "abort")
	info, err := admin.Get(w.ctx, id)
	testkit.Must(t, err, "get")
	if info.Status != saga.StatusRunning || info.Request == nil || info.Request.Action != saga.ActionAbort {
		t.Fatalf("before an orchestrator runs: status %s, request %+v", info.Status, info.Request)
	}

	w.startOrchestrator(o)
	info = w.waitStatus(id, saga.StatusCompensating)
	if got, want := fmt.Sprint(trace(info)), "[reserve_stock:aborted undo reserve_stock:]"; got != want {
		t.Fatalf("history %s, want %s", got, want)
	}
	if a := info.History[0]; a.Error != "customer called (by alice)" {
		t.Fatalf("aborted attempt says %q", a.Error)
	}
	if got, want := actions(info), []string{"abort:requested:alice:customer called", "abort:done:alice:customer called"}; !slices.Equal(got, want) {
		t.Fatalf("actions %v, want %v", got, want)
	}
	w.runParticipants("g")
	w.waitStatus(id, saga.StatusCompensated)
	var stock int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT qty FROM stock`).Scan(&stock), "stock")
	if stock != 10 {
		t.Fatalf("stock %d after the abort, want 10", stock)
	}
}

// sagaRow is what an Admin call that fails must leave unchanged.
func (w *world) sagaRow(id uuid.UUID) string {
	w.t.Helper()
	var row string
	testkit.Must(w.t, w.pool.QueryRow(w.ctx, `SELECT s::text FROM sagabox.sagas s WHERE id = $1`, id).Scan(&row), "row")
	return row
}

func TestAdminRefusesWrongStateAndUnknownSagas(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	def := o.Definition()
	id := uuid.MustParse(w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 1}))
	admin := saga.NewAdmin(w.pool, def)
	before := w.sagaRow(id)
	if err := admin.Retry(w.ctx, id); !errors.Is(err, saga.ErrWrongState) || !strings.Contains(err.Error(), "only failed sagas") {
		t.Fatalf("retry of a running saga: %v, want ErrWrongState", err)
	}
	for _, err := range []error{admin.Retry(w.ctx, uuid.New()), admin.Abort(w.ctx, uuid.New(), "x"),
		admin.Record(w.ctx, uuid.New(), saga.ActionOutboxDiscard, saga.ActionOptions{})} {
		if !errors.Is(err, saga.ErrNotFound) {
			t.Fatalf("unknown saga: %v, want ErrNotFound", err)
		}
	}
	if _, err := admin.Get(w.ctx, uuid.New()); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("get of an unknown saga: %v, want ErrNotFound", err)
	}
	if after := w.sagaRow(id); after != before {
		t.Fatalf("refused calls changed the saga:\n%s\n%s", before, after)
	}
	testkit.Must(t, admin.Abort(w.ctx, id, "first"), "abort")
	pending := w.sagaRow(id)
	if err := admin.Abort(w.ctx, id, "second"); !errors.Is(err, saga.ErrWrongState) || !strings.Contains(err.Error(), "already has a request (abort)") {
		t.Fatalf("second abort: %v, want ErrWrongState (pending)", err)
	}
	if after := w.sagaRow(id); after != pending {
		t.Fatalf("refused abort changed the saga")
	}

	// Past the pivot: an Admin that knows the definition refuses at once;
	// one that does not records the request, and the orchestrator refuses
	// it, changing nothing but the saga's actions.
	past := uuid.MustParse(w.placeOrder(o, order{OrderID: "o2", Item: "book", Qty: 1}))
	_, err := w.pool.Exec(w.ctx, `UPDATE sagabox.sagas SET step = 3 WHERE id = $1`, past)
	testkit.Must(t, err, "past the pivot")
	if err := admin.Abort(w.ctx, past, "late"); !errors.Is(err, saga.ErrWrongState) || !strings.Contains(err.Error(), "past its pivot (approve_order)") {
		t.Fatalf("abort past the pivot: %v, want ErrWrongState", err)
	}
	testkit.Must(t, saga.NewAdmin(w.pool).Abort(w.ctx, past, "late", saga.ActionOptions{Actor: "bob"}), "abort without the definition")
	w.wg.Go(func() { o.RunTimers(w.ctx) }) // the timers carry requests out
	info := w.waitStatus(past, saga.StatusRunning)
	if got, want := actions(info), []string{"abort:requested:bob:late", "abort:refused:bob:late"}; !slices.Equal(got, want) ||
		!strings.Contains(info.Actions[1].Error, "past its pivot") {
		t.Fatalf("actions %v (%+v), want %v", got, info.Actions, want)
	}
	if info.Deadline == nil || info.NextRetryAt != nil || info.Compensation {
		t.Fatalf("refused abort changed the saga: %+v", info)
	}

	// The orchestrator recorded its definition when its timers started
	// (sagabox.saga_definitions): an Admin without the Go definition reads
	// it, and refuses at once too.
	var rec *saga.DefinitionInfo
	testkit.Eventually(t, 30*time.Second, "the definition to be recorded", func() bool {
		rec, err = saga.NewAdmin(w.pool).Definition(w.ctx, def.Name(), def.Version())
		return err == nil
	})
	if got, want := fmt.Sprint(rec.Steps), fmt.Sprint(def.Describe().Steps); got != want {
		t.Fatalf("recorded steps %s, want %s", got, want)
	}
	if err := saga.NewAdmin(w.pool).Abort(w.ctx, past, "later"); !errors.Is(err, saga.ErrWrongState) || !strings.Contains(err.Error(), "past its pivot (approve_order)") {
		t.Fatalf("abort past the pivot, definition from the database: %v, want ErrWrongState", err)
	}
	if _, err := saga.NewAdmin(w.pool).Definition(w.ctx, def.Name(), def.Version()+1); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("an unrecorded version: %v, want ErrNotFound", err)
	}
}

// insertSagas inserts n sagas directly, one per status and type in turn.
func (w *world) insertSagas(n int, prefix string) []uuid.UUID {
	w.t.Helper()
	statuses := []saga.Status{saga.StatusRunning, saga.StatusCompensating, saga.StatusSucceeded, saga.StatusCompensated, saga.StatusFailed}
	ids := make([]uuid.UUID, n)
	for i := range ids {
		ids[i] = uuid.New()
		st := statuses[i%len(statuses)]
		_, err := w.pool.Exec(w.ctx, `INSERT INTO sagabox.sagas (id, saga_type, definition_version, status, step, attempt, data,
			deadline, finished_at, correlation_id)
			VALUES ($1, $2, 1, $3, 0, 1, '{}', CASE WHEN $4 THEN now() - interval '1 minute' END, CASE WHEN $5 THEN now() END, $6)`,
			ids[i], []string{"a", "b"}[i%2], string(st), !st.Finished() && i%3 == 0, st.Finished(), fmt.Sprintf("%s%d", prefix, i))
		testkit.Must(w.t, err, "insert saga")
	}
	return ids
}

func TestAdminListFiltersAndPagesByKeyset(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	admin := saga.NewAdmin(w.pool)
	w.insertSagas(53, "old")
	first, err := admin.List(w.ctx, saga.ListOptions{Limit: 1000})
	testkit.Must(t, err, "list all")
	if len(first.Sagas) != 53 || first.Next != "" {
		t.Fatalf("all: %d sagas, next %q", len(first.Sagas), first.Next)
	}
	all := first.Sagas

	// Paging newest first while sagas are started: every saga that
	// existed at the first page is listed once, in order.
	seen := map[uuid.UUID]int{}
	var order []uuid.UUID
	opt := saga.ListOptions{Limit: 7}
	for pages := 0; ; pages++ {
		p, err := admin.List(w.ctx, opt)
		testkit.Must(t, err, "page %d", pages)
		for _, s := range p.Sagas {
			seen[s.ID]++
			order = append(order, s.ID)
		}
		w.insertSagas(2, fmt.Sprintf("new%d-", pages))
		if p.Next == "" {
			break
		}
		opt.After = p.Next
	}
	if len(order) != len(all) {
		t.Fatalf("paged %d sagas, want %d", len(order), len(all))
	}
	for i, s := range all {
		if order[i] != s.ID || seen[s.ID] != 1 {
			t.Fatalf("saga %d: paged %s (seen %d times), want %s", i, order[i], seen[s.ID], s.ID)
		}
	}
	for i := 1; i < len(all); i++ {
		if all[i].CreatedAt.After(all[i-1].CreatedAt) {
			t.Fatalf("not newest first at %d", i)
		}
	}

	var want struct{ failed, typeA, pastDeadline, runningOrFailedB int }
	for _, s := range all {
		if s.Status == saga.StatusFailed {
			want.failed++
		}
		if s.Type == "a" {
			want.typeA++
		}
		if s.Deadline != nil {
			want.pastDeadline++
		}
		if s.Type == "b" && (s.Status == saga.StatusRunning || s.Status == saga.StatusFailed) {
			want.runningOrFailedB++
		}
	}
	// Sagas inserted while paging match the filters too: count the old.
	old := func(s saga.Info) bool { return strings.HasPrefix(s.CorrelationID, "old") }
	countOld := func(opt saga.ListOptions, check func(saga.Info) bool) int {
		n := 0
		opt.Limit = 1000
		p, err := admin.List(w.ctx, opt)
		testkit.Must(t, err, "list %+v", opt)
		for _, s := range p.Sagas {
			if !check(s) {
				t.Fatalf("list %+v returned %+v", opt, s)
			}
			if old(s) {
				n++
			}
		}
		return n
	}
	if n := countOld(saga.ListOptions{Failed: true}, func(s saga.Info) bool { return s.Status == saga.StatusFailed }); n != want.failed || n == 0 {
		t.Fatalf("failed: %d, want %d", n, want.failed)
	}
	if n := countOld(saga.ListOptions{Type: "a"}, func(s saga.Info) bool { return s.Type == "a" }); n != want.typeA || n == 0 {
		t.Fatalf("type a: %d, want %d", n, want.typeA)
	}
	if n := countOld(saga.ListOptions{PastDeadline: true}, func(s saga.Info) bool { return s.Deadline != nil && !s.Status.Finished() }); n != want.pastDeadline || n == 0 {
		t.Fatalf("past deadline: %d, want %d", n, want.pastDeadline)
	}
	if n := countOld(saga.ListOptions{Type: "b", Status: []saga.Status{saga.StatusRunning, saga.StatusFailed}}, func(s saga.Info) bool {
		return s.Type == "b" && (s.Status == saga.StatusRunning || s.Status == saga.StatusFailed)
	}); n != want.runningOrFailedB || n == 0 {
		t.Fatalf("running or failed of b: %d, want %d", n, want.runningOrFailedB)
	}
	if _, err := admin.List(w.ctx, saga.ListOptions{After: "not a cursor"}); !errors.Is(err, saga.ErrInvalidCursor) {
		t.Fatalf("bad cursor: %v, want ErrInvalidCursor", err)
	}
	if _, err := admin.List(w.ctx, saga.ListOptions{Limit: -1}); !errors.Is(err, saga.ErrInvalidConfig) {
		t.Fatalf("negative limit: %v, want ErrInvalidConfig", err)
	}
}

func TestAdminCounts(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	admin := saga.NewAdmin(w.pool)
	counts, err := admin.Counts(w.ctx)
	testkit.Must(t, err, "counts")
	if len(counts) != 5 || counts[saga.StatusRunning] != 0 {
		t.Fatalf("empty counts: %v", counts)
	}
	w.insertSagas(12, "c")
	counts, err = admin.Counts(w.ctx)
	testkit.Must(t, err, "counts")
	want := map[saga.Status]int64{saga.StatusRunning: 3, saga.StatusCompensating: 3, saga.StatusSucceeded: 2, saga.StatusCompensated: 2, saga.StatusFailed: 2}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Fatalf("counts %v, want %v", counts, want)
	}
}

// A reply that the saga awaited arrives after an operator's abort request
// and before the timer poll: the reply is applied (the saga moves to its
// next step), the saga stays due, and the poll then aborts it from there.
func TestAdminRequestSurvivesAReplyBeforeThePoll(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	id := uuid.MustParse(w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 1}))
	testkit.Must(t, saga.NewAdmin(w.pool).Abort(w.ctx, id, "changed my mind"), "abort")
	_, payload, err := testCodec().Encode("test.catalog.StockReserved", stockReserved{ReservationID: "r"})
	testkit.Must(t, err, "payload")
	testkit.Must(t, errors.Join(o.HandleReplies(w.ctx, []*saga.Reply{{SagaID: id, Step: 0, Attempt: 1, Outcome: saga.OutcomeSucceeded,
		PayloadType: "test.catalog.StockReserved", Payload: payload}})...), "reply")
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, id)
	testkit.Must(t, err, "get")
	if info.Step != 1 || info.Request == nil || info.NextRetryAt == nil {
		t.Fatalf("after the reply: step %d, request %+v, due %v; want step 1, still requested and due", info.Step, info.Request, info.NextRetryAt)
	}
	w.wg.Go(func() { o.RunTimers(w.ctx) })
	info = w.waitStatus(id, saga.StatusCompensating)
	if got, want := fmt.Sprint(trace(info)), "[reserve_stock:succeeded debit_credit:aborted undo debit_credit:]"; got != want {
		t.Fatalf("history %s, want %s", got, want)
	}
}
