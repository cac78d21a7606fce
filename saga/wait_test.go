package saga_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// startWaiter runs a Waiter on the world's database and waits until its
// connection LISTENs. It returns the listening backend's PID.
func (w *world) startWaiter() (*saga.Waiter, func() int) {
	w.t.Helper()
	rt := w.runtime(nil)
	waiter, err := saga.NewWaiter(rt)
	testkit.Must(w.t, err, "NewWaiter")
	if rt.attached.Load() != 1 {
		w.t.Fatalf("NewWaiter attached %d parts, want 1", rt.attached.Load())
	}
	w.goRun("waiter", waiter.Run)
	listener := func() int {
		var pid int
		_ = w.pool.QueryRow(w.ctx, `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND query = 'LISTEN `+saga.FinishedChannel+`' AND pid <> pg_backend_pid()`).Scan(&pid)
		return pid
	}
	testkit.Eventually(w.t, time.Minute, "the waiter to LISTEN", func() bool { return listener() != 0 })
	return waiter, listener
}

// Invariant: Wait returns each saga once it has finished, with the status
// the orchestrator committed, whether it succeeded or compensated, whether
// the wait began before or after the end, and whichever path (a reply
// batch, one reply) finished it.
func TestWaiterReturnsEachSagaOnceItFinishes(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 100, "ann", 1000)
	w.seed("vetoed", 100, "ann", 1000)
	waiter, _ := w.startWaiter()
	w.runParticipants("g")
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	w.startOrchestrator(o)

	const n = 30
	ctx, cancel := context.WithTimeout(w.ctx, 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	got := make([]*saga.Info, n)
	errs := make([]error, n)
	ids := make([]string, n)
	for i := range n {
		item := "book"
		if i%3 == 0 {
			item = "vetoed" // the pivot refuses: compensated
		}
		ids[i] = w.placeOrder(o, order{OrderID: fmt.Sprintf("o%d", i), Item: item, Qty: 1, User: "ann", Amount: 10})
		wg.Go(func() { got[i], errs[i] = waiter.Wait(ctx, uuid.MustParse(ids[i])) })
	}
	wg.Wait()
	statuses := w.waitFinished(ids, time.Minute) // the table's view
	// A wait that starts after the end returns at once.
	late, err := waiter.Wait(ctx, uuid.MustParse(ids[0]))
	testkit.Must(t, err, "wait for a finished saga")
	if late.Status != statuses[ids[0]] {
		t.Errorf("late wait: %s, want %s", late.Status, statuses[ids[0]])
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("wait %d: %v (status so far: %v)", i, errs[i], got[i])
		}
		want := saga.StatusSucceeded
		if i%3 == 0 {
			want = saga.StatusCompensated
		}
		if got[i].Status != want || statuses[ids[i]] != want {
			t.Errorf("saga %d: Wait says %s, the table %s; want %s", i, got[i].Status, statuses[ids[i]], want)
		}
	}
}

// Invariant: a Waiter whose connection is killed reconnects, and its
// waiters still learn that their saga finished; an unknown ID is
// ErrNotFound at once; a wait whose context ends returns the saga as it
// stands, with the context's error.
func TestWaiterSurvivesItsConnectionBeingKilled(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 100, "ann", 1000)
	waiter, listener := w.startWaiter()
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	w.startOrchestrator(o)

	if _, err := waiter.Wait(w.ctx, uuid.New()); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("unknown saga: got %v, want ErrNotFound", err)
	}
	// No participant runs yet: the saga waits on its first step.
	id := uuid.MustParse(w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 1, User: "ann", Amount: 10}))
	short, cancel := context.WithTimeout(w.ctx, 200*time.Millisecond)
	info, err := waiter.Wait(short, id)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || info == nil || info.Status.Finished() {
		t.Fatalf("wait past its deadline: got %v, %v; want the running saga and DeadlineExceeded", info, err)
	}

	done := make(chan *saga.Info, 1)
	go func() {
		info, err := waiter.Wait(w.ctx, id)
		if err != nil {
			t.Errorf("wait: %v", err)
		}
		done <- info
	}()
	old := listener()
	_, err = w.pool.Exec(w.ctx, `SELECT pg_terminate_backend($1)`, old)
	testkit.Must(t, err, "terminate the waiter's connection")
	testkit.Eventually(t, time.Minute, "the waiter to LISTEN again", func() bool {
		pid := listener()
		return pid != 0 && pid != old
	})
	w.runParticipants("g")
	select {
	case info := <-done:
		if info == nil || info.Status != saga.StatusSucceeded {
			t.Fatalf("after the reconnect: %v, want succeeded", info)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the wait did not return after the saga finished (status %s)", w.waitFinished([]string{id.String()}, time.Minute)[id.String()])
	}
}
