package saga_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// pivotDefinition reserves stock, debits credit as the pivot and approves
// the order (retriable, local). The debit's attempts time out fast: the
// tests freeze its participant, so they time out whatever the machine's
// speed; a frozen participant's reply can only come late.
func pivotDefinition(budget time.Duration) *saga.Definition[order] {
	retry := saga.RetryPolicy{MaxAttempts: 2, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	return saga.MustDefinition("create_order", 7,
		saga.Step[order]{
			Name: "reserve_stock",
			Invoke: &saga.Invocation[order]{Topic: catalogTopic, Command: "reserve_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Compensate: &saga.Invocation[order]{Topic: catalogTopic, Command: "release_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Timeout: time.Minute, Retry: retry, CompensationTimeout: time.Minute,
		},
		saga.Step[order]{
			Name: "debit_credit", Kind: saga.Pivot,
			Invoke: &saga.Invocation[order]{Topic: usersTopic, Command: "debit_credit", Type: "test.users.DebitCredit",
				Payload: func(o *order) (any, error) { return debitCredit{User: o.User, Amount: o.Amount}, nil }},
			Timeout: 150 * time.Millisecond, Retry: retry, UnknownOutcomeBudget: budget,
		},
		saga.Step[order]{
			Name: "approve_order", Kind: saga.Retriable,
			Local: func(ctx context.Context, tx pgx.Tx, o *order) error {
				_, err := tx.Exec(ctx, `UPDATE orders SET status = 'approved' WHERE id = $1`, o.OrderID)
				return err
			},
		},
	)
}

func (w *world) info(id string) *saga.Info {
	w.t.Helper()
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(id))
	testkit.Must(w.t, err, "get %s", id)
	return info
}

func (w *world) balanceAndStock() (balance, stock int) {
	w.t.Helper()
	testkit.Must(w.t, w.pool.QueryRow(w.ctx, `SELECT (SELECT sum(balance) FROM credit), (SELECT sum(qty) FROM stock)`).Scan(&balance, &stock), "totals")
	return balance, stock
}

// outcomes counts the step's attempts in the history by outcome.
func outcomes(info *saga.Info, step string, comp bool) map[saga.Outcome]int {
	n := map[saga.Outcome]int{}
	for _, a := range info.History {
		if a.Name == step && a.Compensation == comp {
			n[a.Outcome]++
		}
	}
	return n
}

// Invariant (issue 12): a pivot whose participant is frozen for longer than
// the step's whole retry budget is not given up on: the saga stays running,
// awaiting the pivot, re-sending it; when the participant answers, its
// definitive answer is applied: a debit completes the saga, a rejection
// compensates it. Every effect happens once.
func TestPivotFrozenPastItsRetryBudgetFinishesWhenItAnswers(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.seed("book", 10, "ann", 100)
	w.seed("book", 10, "poor", 0)
	catalog, users := w.participants("g")
	w.goRun("catalog", catalog.Run) // users is frozen: not running
	reg := prometheus.NewRegistry()
	o := w.orchestrator(pivotDefinition(0), func(c *saga.Config, rt *testRuntime) { rt.registerer = reg })
	w.startOrchestrator(o)
	ok := w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 2, User: "ann", Amount: 30})
	refused := w.placeOrder(o, order{OrderID: "o2", Item: "book", Qty: 3, User: "poor", Amount: 30})
	ids := []string{ok, refused}
	// Past the retry policy's 2 attempts, and asked again twice more.
	testkit.Eventually(t, 60*time.Second, "both sagas to ask the frozen pivot a 4th time (or to give up)", func() bool {
		var n int
		_ = w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.sagas WHERE id::text = ANY($1) AND (step = 1 AND attempt >= 4 OR finished_at IS NOT NULL)`, ids).Scan(&n)
		return n == 2
	})
	for _, id := range ids {
		info := w.info(id)
		if info.Status != saga.StatusRunning || info.Step != 1 || info.Deadline == nil && info.NextRetryAt == nil ||
			!strings.Contains(info.LastError, "outcome unknown") {
			t.Fatalf("saga %s while the pivot is silent: %s step %d attempt %d, last error %q", id, info.Status, info.Step, info.Attempt, info.LastError)
		}
		if n := outcomes(info, "debit_credit", false)[saga.OutcomeTimedOut]; n < 3 {
			t.Fatalf("saga %s: %d timed out attempts in the history", id, n)
		}
	}
	// Attempts 3 and 4 of both sagas were re-asks, counted for alerts (after
	// their commits).
	testkit.Eventually(t, 30*time.Second, "sagabox_saga_unknown_outcome_retries_total to count 4 re-asks", func() bool {
		return counter(t, reg, "sagabox_saga_unknown_outcome_retries_total", nil) >= 4
	})
	w.goRun("users", users.Run) // the participant thaws
	st := w.waitFinished(ids, 90*time.Second)
	if st[ok] != saga.StatusSucceeded || st[refused] != saga.StatusCompensated {
		t.Fatalf("statuses after the participant answered: %v (want %s succeeded, %s compensated)", st, ok, refused)
	}
	checkExactlyOnce(t, w, []string{ok}, []string{"reserve", "debit"})
	checkExactlyOnce(t, w, []string{refused}, []string{"reserve", "release"})
	if balance, stock := w.balanceAndStock(); balance != 70 || stock != 8 {
		t.Fatalf("balance %d stock %d, want 70 and 8", balance, stock)
	}
	for _, id := range ids {
		n := outcomes(w.info(id), "debit_credit", false)
		if n[saga.OutcomeSucceeded]+n[saga.OutcomeRejected] != 1 {
			t.Fatalf("saga %s: the pivot's answer was applied %d times", id, n[saga.OutcomeSucceeded]+n[saga.OutcomeRejected])
		}
	}
}

// Invariant (issue 12): a pivot that stayed silent past its
// UnknownOutcomeBudget ends failed without compensating; an operator's
// retry re-sends it, and the participant's answer (to the attempts before
// the retry and to the retry's, all from its inbox) is applied once.
func TestPivotReplyAfterAnOperatorRetryIsAppliedOnce(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.seed("book", 10, "ann", 100)
	catalog, users := w.participants("g")
	w.goRun("catalog", catalog.Run)
	reg := prometheus.NewRegistry()
	o := w.orchestrator(pivotDefinition(300*time.Millisecond), func(c *saga.Config, rt *testRuntime) { rt.registerer = reg })
	w.startOrchestrator(o)
	id := w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 2, User: "ann", Amount: 30})
	if st := w.waitFinished([]string{id}, 60*time.Second)[id]; st != saga.StatusFailed {
		t.Fatalf("status %s, want failed once the budget is spent", st)
	}
	info := w.info(id)
	if info.Step != 1 || info.Compensation || !strings.Contains(info.LastError, "UnknownOutcomeBudget") {
		t.Fatalf("failed saga: step %d compensation %v, last error %q", info.Step, info.Compensation, info.LastError)
	}
	before := info.Attempt
	admin := saga.NewAdmin(w.pool)
	testkit.Must(t, admin.Retry(w.ctx, uuid.MustParse(id), saga.ActionOptions{Actor: "test"}), "retry")
	// The retry's attempts go unanswered too, and the saga fails again:
	// the answers then come to a failed saga, to attempts of both rounds.
	testkit.Eventually(t, 60*time.Second, "the retry to be carried out, and to fail again", func() bool {
		i := w.info(id)
		return len(i.Actions) == 2 && i.Actions[1].Result == saga.ResultDone && i.Status == saga.StatusFailed
	})
	w.goRun("users", users.Run)
	// A failed saga counts as finished: wait for it to succeed.
	testkit.Eventually(t, 90*time.Second, "the failed saga to succeed with the participant's answer", func() bool {
		return w.info(id).Status == saga.StatusSucceeded
	})
	// Not checkExactlyOnce: the retry re-sends attempt 1, the same command
	// as the first one, on purpose.
	if eff := w.effects()[id]; !slices.Equal(eff, []string{"reserve", "debit"}) {
		t.Fatalf("effects %v, want one reserve and one debit", eff)
	}
	info = w.info(id)
	if n := outcomes(info, "debit_credit", false); n[saga.OutcomeSucceeded] != 1 {
		t.Fatalf("the pivot succeeded %d times in the history, want 1: %v", n[saga.OutcomeSucceeded], trace(info))
	}
	if n := outcomes(info, "approve_order", false); n[saga.OutcomeSucceeded] != 1 {
		t.Fatalf("approve_order ran %v", n)
	}
	if balance, _ := w.balanceAndStock(); balance != 70 {
		t.Fatalf("balance %d, want 70", balance)
	}
	// Every attempt, before the retry and after it, is answered: one reply
	// is used, the others are duplicates.
	testkit.Eventually(t, 60*time.Second, "the duplicate replies to be ignored", func() bool {
		return counter(t, reg, "sagabox_saga_replies_ignored_total", nil) >= float64(before)
	})
	if got := counter(t, reg, "sagabox_saga_late_replies_total", map[string]string{"disposition": "applied"}); got != 1 {
		t.Fatalf("%v late replies applied, want 1", got)
	}
	if l := info.LateReplies; len(l) != 1 || l[0].Disposition != saga.LateApplied || l[0].Name != "debit_credit" || l[0].Attempt != 1 {
		t.Fatalf("late replies %+v, want the first attempt's, applied", l)
	}
}

// Invariant (issue 12): an abort, typed (Orchestrator.Abort) or by an
// operator (Admin.Abort), of a saga whose step is backing off between
// attempts compensates that step too: the attempt that timed out runs
// later, and its effect is undone.
func TestAbortWhileAStepBacksOffCompensatesIt(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.seed("book", 10, "ann", 100)
	catalog, users := w.participants("g")
	w.goRun("users", users.Run) // catalog is frozen
	retry := saga.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Hour}
	def := saga.MustDefinition("create_order", 8,
		saga.Step[order]{
			Name: "reserve_stock",
			Invoke: &saga.Invocation[order]{Topic: catalogTopic, Command: "reserve_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Compensate: &saga.Invocation[order]{Topic: catalogTopic, Command: "release_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Timeout: 100 * time.Millisecond, Retry: retry, CompensationTimeout: time.Minute,
		},
		saga.Step[order]{Name: "debit_credit", Kind: saga.Pivot,
			Invoke: &saga.Invocation[order]{Topic: usersTopic, Command: "debit_credit", Type: "test.users.DebitCredit",
				Payload: func(o *order) (any, error) { return debitCredit{User: o.User, Amount: o.Amount}, nil }}},
	)
	o := w.orchestrator(def, nil)
	w.startOrchestrator(o)
	typed := w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 2, User: "ann", Amount: 1})
	byAdmin := w.placeOrder(o, order{OrderID: "o2", Item: "book", Qty: 3, User: "ann", Amount: 1})
	ids := []string{typed, byAdmin}
	testkit.Eventually(t, 60*time.Second, "both sagas to back off after a timed-out reserve", func() bool {
		var n int
		_ = w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.sagas WHERE id::text = ANY($1) AND attempt = 2 AND next_retry_at IS NOT NULL`, ids).Scan(&n)
		return n == 2
	})
	testkit.Must(t, o.Abort(w.ctx, uuid.MustParse(typed), "customer cancelled"), "abort")
	testkit.Must(t, saga.NewAdmin(w.pool).Abort(w.ctx, uuid.MustParse(byAdmin), "customer cancelled"), "admin abort")
	testkit.Eventually(t, 60*time.Second, "both aborts to be carried out", func() bool {
		var n int
		_ = w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.sagas WHERE id::text = ANY($1) AND status <> 'running'`, ids).Scan(&n)
		return n == 2
	})
	for _, id := range ids {
		// The release went out with the abort, to the frozen catalog.
		if info := w.info(id); info.Status != saga.StatusCompensating || !info.Compensation || info.Step != 0 {
			t.Fatalf("saga %s after the abort: %s step %d compensation %v: the backed-off step was not compensated",
				id, info.Status, info.Step, info.Compensation)
		}
	}
	w.goRun("catalog", catalog.Run) // reserve (attempt 1) runs, then release
	for id, st := range w.waitFinished(ids, 90*time.Second) {
		if st != saga.StatusCompensated {
			t.Fatalf("saga %s: %s", id, st)
		}
	}
	checkExactlyOnce(t, w, ids, []string{"reserve", "release"})
	if _, stock := w.balanceAndStock(); stock != 10 {
		t.Fatalf("stock %d, want 10", stock)
	}
	for _, id := range ids {
		info := w.info(id)
		if f := info.Failure; f == nil || f.Outcome != saga.OutcomeAborted || f.Attempts != 1 {
			t.Fatalf("saga %s failure %+v", id, info.Failure)
		}
		if got := trace(info); !slices.Equal(got, []string{"reserve_stock:timed_out", "undo reserve_stock:succeeded"}) {
			t.Fatalf("saga %s history %v", id, got)
		}
	}
}

// lateReply is a participant's reply as the orchestrator decodes it.
func lateReply(id string, step, attempt int, comp bool, outcome saga.Outcome) *saga.Reply {
	return &saga.Reply{SagaID: uuid.MustParse(id), Step: step, Attempt: attempt, Compensation: comp, Outcome: outcome}
}

// Invariant (issue 12): a reply a saga can no longer use is never silently
// lost: it is recorded in the saga's history (Info.LateReplies) and
// counted (sagabox_saga_late_replies_total, at 0 from the start); an action
// that succeeded after the saga compensated past it gets its compensation
// sent; a pivot that succeeded after an abort is recorded for an operator;
// a duplicate of a reply the saga used is only ignored.
func TestLateRepliesAreRecordedCountedAndCompensated(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0) // the replies are handed to the orchestrator
	reg := prometheus.NewRegistry()
	o := w.orchestrator(pivotDefinition(0), func(c *saga.Config, rt *testRuntime) { rt.registerer = reg })
	mfs, err := reg.Gather()
	testkit.Must(t, err, "gather")
	for _, d := range []string{"applied", "compensated", "recorded"} {
		found := false
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					found = found || mf.GetName() == "sagabox_saga_late_replies_total" && lp.GetName() == "disposition" && lp.GetValue() == d
				}
			}
		}
		if !found {
			t.Fatalf("sagabox_saga_late_replies_total{disposition=%q} is not exported before any late reply", d)
		}
	}
	late := func(d string) float64 {
		return counter(t, reg, "sagabox_saga_late_replies_total", map[string]string{"disposition": d})
	}
	handle := func(r *saga.Reply) {
		t.Helper()
		for _, err := range o.HandleReplies(w.ctx, []*saga.Reply{r}) {
			testkit.Must(t, err, "handle reply")
		}
	}
	commands := func(id, command string) int {
		var n int
		testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.outbox WHERE saga_id::text = $1
			AND headers->>$2 = $3`, id, saga.HeaderCommand, command).Scan(&n), "commands")
		return n
	}

	// Saga A: aborted while its reserve is in flight, compensated; then the
	// reserve's success arrives.
	a := w.placeOrder(o, order{OrderID: "a", Item: "book", Qty: 1, User: "ann", Amount: 1})
	testkit.Must(t, o.Abort(w.ctx, uuid.MustParse(a), "test"), "abort a")
	handle(lateReply(a, 0, 1, true, saga.OutcomeSucceeded))
	if st := w.info(a).Status; st != saga.StatusCompensated {
		t.Fatalf("saga a: %s", st)
	}
	releases := commands(a, "release_stock")
	handle(lateReply(a, 0, 1, false, saga.OutcomeSucceeded))
	if got := commands(a, "release_stock"); got != releases+1 {
		t.Fatalf("saga a: %d release commands after the late reserve, want %d", got, releases+1)
	}
	// Saga B: the pivot in flight when an operator aborts; its debit
	// happens anyway.
	b := w.placeOrder(o, order{OrderID: "b", Item: "book", Qty: 1, User: "ann", Amount: 1})
	handle(lateReply(b, 0, 1, false, saga.OutcomeSucceeded))
	testkit.Must(t, o.Abort(w.ctx, uuid.MustParse(b), "test"), "abort b")
	handle(lateReply(b, 0, 1, true, saga.OutcomeSucceeded))
	handle(lateReply(b, 1, 1, false, saga.OutcomeSucceeded))
	// Duplicates of used replies: ignored, not recorded.
	handle(lateReply(b, 0, 1, false, saga.OutcomeSucceeded))
	handle(lateReply(b, 0, 1, true, saga.OutcomeSucceeded))

	if ia := w.info(a).LateReplies; len(ia) != 1 || ia[0].Disposition != saga.LateCompensated || ia[0].Name != "reserve_stock" {
		t.Fatalf("saga a late replies %+v", ia)
	}
	ib := w.info(b)
	if ib.Status != saga.StatusCompensated || len(ib.LateReplies) != 1 || ib.LateReplies[0].Disposition != saga.LateRecorded ||
		ib.LateReplies[0].Name != "debit_credit" || !strings.Contains(ib.LateReplies[0].Note, "by hand") {
		t.Fatalf("saga b: %s, late replies %+v", ib.Status, ib.LateReplies)
	}
	if late("compensated") != 1 || late("recorded") != 1 || late("applied") != 0 {
		t.Fatalf("late replies counted: %v compensated, %v recorded, %v applied; want 1, 1, 0", late("compensated"), late("recorded"), late("applied"))
	}
	if got := counter(t, reg, "sagabox_saga_replies_ignored_total", nil); got != 4 {
		t.Fatalf("%v replies ignored, want 4 (2 late, 2 duplicates)", got)
	}
}
