package saga_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// failureDefinition cancels the order in its first step's compensation with
// the failure it is handed. Its first compensation attempt fails, so that
// the second runs in a later transaction, from the saga's row.
func failureDefinition(tried *sync.Map) *saga.Definition[order] {
	retry := saga.RetryPolicy{MaxAttempts: 2, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	return saga.MustDefinition("failure_order", 1,
		saga.Step[order]{
			Name:  "create_order",
			Local: func(context.Context, pgx.Tx, *order) error { return nil },
			CompensateLocal: func(ctx context.Context, tx pgx.Tx, o *order) error {
				if _, again := tried.LoadOrStore(o.OrderID, true); !again {
					return errors.New("first compensation attempt fails")
				}
				f, ok := saga.FailureFrom(ctx)
				if !ok {
					return errors.New("no failure in the compensation's context")
				}
				_, err := tx.Exec(ctx, `UPDATE orders SET status = $2 WHERE id = $1`, o.OrderID,
					f.StepName+"/"+string(f.Outcome)+"/"+f.Reason)
				return err
			},
			CompensationRetry: retry,
		},
		saga.Step[order]{
			Name: "check_stock",
			Local: func(_ context.Context, _ pgx.Tx, o *order) error {
				if o.Item == "none" {
					return saga.Reject("insufficient stock")
				}
				return nil
			},
		},
		saga.Step[order]{
			// Nobody consumes this topic: the step times out.
			Name:    "reserve_stock",
			Invoke:  &saga.Invocation[order]{Topic: "silent.commands", Command: "reserve_stock"},
			Timeout: 200 * time.Millisecond, Retry: retry,
		},
	)
}

// Invariant: a compensation learns why the saga compensates (step, outcome,
// reason) through FailureFrom: a rejection is reported as the rejection, a
// step that timed out as timed out, never as the business "no". The failure
// is stored in the saga's row, so a compensation retried later, by any
// orchestrator, sees it too.
func TestCompensationSeesTheFailureFromTheRow(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0) // database only: nothing answers reserve_stock
	var tried sync.Map
	def := failureDefinition(&tried)
	a, b := w.orchestrator(def, nil), w.orchestrator(def, nil)
	rejected := w.placeOrder(a, order{OrderID: "o1", Item: "none"})
	timedOut := w.placeOrder(b, order{OrderID: "o2", Item: "tea"})
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(rejected))
	testkit.Must(t, err, "get")
	if info.Status != saga.StatusCompensating || info.Failure == nil || info.Failure.StepName != "check_stock" {
		t.Fatalf("after the rejection: %+v", info)
	}
	ctx, cancel := context.WithCancel(w.ctx)
	defer cancel()
	w.wg.Go(func() { a.RunTimers(ctx) })
	w.wg.Go(func() { b.RunTimers(ctx) })
	for id, st := range w.waitFinished([]string{rejected, timedOut}, 60*time.Second) {
		if st != saga.StatusCompensated {
			t.Fatalf("saga %s: status %s", id, st)
		}
	}
	for order, want := range map[string]string{
		"o1": "check_stock/rejected/insufficient stock",
		"o2": "reserve_stock/timed_out/timed out after 2 attempts",
	} {
		var status string
		testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT status FROM orders WHERE id = $1`, order).Scan(&status), "order")
		if status != want {
			t.Errorf("order %s: status %q, want %q", order, status, want)
		}
	}
	info, err = saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(rejected))
	testkit.Must(t, err, "get")
	if f := info.Failure; f == nil || !f.Rejected() || f.Step != 1 || f.Attempts != 1 {
		t.Errorf("stored failure of the rejection %+v", info.Failure)
	}
	info, err = saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(timedOut))
	testkit.Must(t, err, "get")
	if f := info.Failure; f == nil || f.Rejected() || !f.TimedOut() || f.Step != 2 || f.Attempts != 2 {
		t.Errorf("stored failure of the timeout %+v", info.Failure)
	}
}

// Invariant: a Compensate invocation's PayloadContext sees the failure too,
// and a step that timed out is reported as timed out, not as rejected.
func TestCompensationPayloadSeesTheFailure(t *testing.T) {
	t.Parallel()
	inv := func(cmd string) *saga.Invocation[order] {
		return &saga.Invocation[order]{Topic: catalogTopic, Command: cmd}
	}
	def := saga.MustDefinition("payload_failure", 1,
		saga.Step[order]{Name: "reserve_stock", Invoke: inv("reserve_stock"),
			Compensate: &saga.Invocation[order]{Topic: catalogTopic, Command: "release_stock", Type: "test.catalog.ReserveStock",
				PayloadContext: func(ctx context.Context, o *order) (any, error) {
					f, ok := saga.FailureFrom(ctx)
					if !ok {
						return nil, errors.New("no failure")
					}
					return reserveStock{Item: f.StepName + "/" + string(f.Outcome) + "/" + f.Reason, Qty: f.Attempts}, nil
				}},
			Timeout: time.Second, Retry: saga.RetryPolicy{MaxAttempts: 2}},
		saga.Step[order]{Name: "debit_credit", Invoke: inv("debit_credit"), Timeout: time.Second,
			Retry: saga.RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Second}},
	)
	for _, tc := range []struct {
		name string
		fail func(context.Context, *saga.Simulation[order]) error
		want reserveStock
	}{
		{"rejected", func(ctx context.Context, sim *saga.Simulation[order]) error {
			_, err := sim.Reply(ctx, saga.Reply{Step: 1, Attempt: 1, Outcome: saga.OutcomeRejected, Reason: "insufficient credit"})
			return err
		}, reserveStock{Item: "debit_credit/rejected/insufficient credit", Qty: 1}},
		{"timed out", func(ctx context.Context, sim *saga.Simulation[order]) error {
			for sim.Status() == saga.StatusRunning { // time out, back off, time out
				if err := sim.Advance(ctx, time.Minute); err != nil {
					return err
				}
			}
			return nil
		}, reserveStock{Item: "debit_credit/timed_out/timed out after 2 attempts", Qty: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			sim := saga.NewSimulation(def, testCodec(), order{OrderID: "o1"})
			testkit.Must(t, sim.Start(ctx), "start")
			_, err := sim.Reply(ctx, saga.Reply{Step: 0, Attempt: 1, Outcome: saga.OutcomeSucceeded})
			testkit.Must(t, err, "reply")
			testkit.Must(t, tc.fail(ctx, sim), "fail")
			sent := sim.Sent()
			last := sent[len(sent)-1]
			var got reserveStock
			testkit.Must(t, last.Decode(&got), "decode")
			if last.Command != "release_stock" || got != tc.want {
				t.Fatalf("%s %+v, want release_stock %+v", last.Command, got, tc.want)
			}
			if f, ok := sim.Failure(); !ok || f.Rejected() != (tc.name == "rejected") || f.TimedOut() != (tc.name == "timed out") {
				t.Fatalf("Failure() = %+v, %v", f, ok)
			}
		})
	}
}
