package participanttest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/saga"
)

// Subject is what RunIdempotencySuite tests: a participant, one action
// with its compensation, and a way to look at their effects.
type Subject[S comparable] struct {
	// Harness runs the participant, on a database of its own.
	Harness *Harness
	// Action is a command (built with Harness.Command) that succeeds in the
	// setup's state and changes State.
	Action *saga.Command
	// Compensation undoes Action (built with Harness.Compensation).
	Compensation *saga.Command
	// State observes the handlers' effects: stock levels, balances, rows
	// in the participant's tables. From the setup's state, the same
	// deliveries must give the same State, so leave generated IDs out.
	State func(ctx context.Context) (S, error)
}

// RaceTimeout bounds how long the concurrent-delivery case waits for its
// two deliveries to be in flight together.
var RaceTimeout = 30 * time.Second

// RunIdempotencySuite checks the saga barrier on the subjects setup
// builds, one per case, each on a fresh database in the same starting
// state (setup runs in the case's subtest, which runs in parallel):
//
//   - Redelivery: an action, and its compensation, delivered again or
//     retried have no second effect and get the stored reply again.
//   - CompensationBeforeAction: a compensation whose action never ran
//     succeeds and changes nothing; the action arriving late is refused and
//     changes nothing.
//   - LateActionAfterCompensation: an action delivered again after its
//     compensation ran changes nothing and gets its stored reply.
//   - ConcurrentDeliveries: two deliveries of the action at the same moment
//     (both handlers run before either commits) leave the state one
//     delivery leaves, and both get the same reply.
//
// The suite refuses an Action that fails or that State does not see: it
// would prove nothing.
func RunIdempotencySuite[S comparable](t *testing.T, setup func(t *testing.T) Subject[S]) {
	t.Helper()
	t.Run("Redelivery", func(t *testing.T) {
		t.Parallel()
		s := setup(t)
		_, first := act(t, s)
		after := state(t, s)
		for _, attempt := range []int{s.Action.Attempt, s.Action.Attempt + 1} {
			again := *s.Action
			again.Attempt, again.MessageID = attempt, uuid.NewString()
			r := s.Harness.Deliver(&again)
			if got := state(t, s); got != after {
				t.Errorf("the action delivered again (attempt %d) had a second effect: state %+v, after the first delivery %+v", attempt, got, after)
			}
			if !r.same(first) {
				t.Errorf("the action delivered again (attempt %d) got %v, the first delivery %v", attempt, r, first)
			}
		}
		comp := s.Harness.Deliver(s.Compensation)
		if comp.Outcome != saga.OutcomeSucceeded {
			t.Fatalf("the compensation failed: %v", comp)
		}
		compensated := state(t, s)
		for _, attempt := range []int{s.Compensation.Attempt, s.Compensation.Attempt + 1} {
			again := *s.Compensation
			again.Attempt, again.MessageID = attempt, uuid.NewString()
			r := s.Harness.Deliver(&again)
			if got := state(t, s); got != compensated {
				t.Errorf("the compensation delivered again (attempt %d) had a second effect: state %+v, after the first %+v", attempt, got, compensated)
			}
			if !r.same(comp) {
				t.Errorf("the compensation delivered again (attempt %d) got %v, the first delivery %v", attempt, r, comp)
			}
		}
	})
	t.Run("CompensationBeforeAction", func(t *testing.T) {
		t.Parallel()
		s := setup(t)
		before := state(t, s)
		comp := s.Harness.Deliver(s.Compensation)
		if comp.Outcome != saga.OutcomeSucceeded {
			t.Errorf("a compensation before its action got %v, want succeeded: there is nothing to undo", comp)
		}
		if got := state(t, s); got != before {
			t.Errorf("a compensation before its action changed the state: %+v, before %+v", got, before)
		}
		late := s.Harness.Deliver(s.Action)
		if late.Outcome != saga.OutcomeRejected {
			t.Errorf("the action after its compensation got %v, want rejected", late)
		}
		if got := state(t, s); got != before {
			t.Errorf("the action after its compensation changed the state: %+v, before %+v", got, before)
		}
	})
	t.Run("LateActionAfterCompensation", func(t *testing.T) {
		t.Parallel()
		s := setup(t)
		_, first := act(t, s)
		if r := s.Harness.Deliver(s.Compensation); r.Outcome != saga.OutcomeSucceeded {
			t.Fatalf("the compensation failed: %v", r)
		}
		compensated := state(t, s)
		late := *s.Action
		late.MessageID = uuid.NewString()
		r := s.Harness.Deliver(&late)
		if got := state(t, s); got != compensated {
			t.Errorf("the action delivered late, after its compensation, changed the state: %+v, compensated %+v", got, compensated)
		}
		if !r.same(first) {
			t.Errorf("the action delivered late got %v, the first delivery %v", r, first)
		}
	})
	t.Run("ConcurrentDeliveries", func(t *testing.T) {
		t.Parallel()
		once, first := act(t, setup(t))
		s := setup(t)
		state(t, s)
		replies := race(t, s.Harness, s.Action, 2)
		if got := state(t, s); got != once {
			t.Errorf("two deliveries racing left state %+v, one delivery leaves %+v", got, once)
		}
		if len(replies) != 2 || !replies[0].same(replies[1]) || replies[0].Outcome != first.Outcome {
			t.Errorf("two deliveries racing got %v, want two identical replies, %s as one delivery gets", replies, first.Outcome)
		}
	})
}

// act delivers s.Action and returns the state after it and its reply,
// refusing an action that the suite cannot learn from.
func act[S comparable](t *testing.T, s Subject[S]) (S, Reply) {
	t.Helper()
	if s.Harness == nil || s.Action == nil || s.Compensation == nil || s.State == nil {
		t.Fatal("participanttest: the Subject needs Harness, Action, Compensation and State")
	}
	before := state(t, s)
	r := s.Harness.Deliver(s.Action)
	if r.Outcome != saga.OutcomeSucceeded {
		t.Fatalf("participanttest: the Action must succeed in the setup's state, got %v", r)
	}
	after := state(t, s)
	if after == before {
		t.Fatalf("participanttest: the Action changed nothing State sees (%+v): the suite would prove nothing", after)
	}
	return after, r
}

func state[S comparable](t *testing.T, s Subject[S]) S {
	t.Helper()
	if s.State == nil {
		t.Fatal("participanttest: the Subject needs State")
	}
	v, err := s.State(t.Context())
	if err != nil {
		t.Fatalf("participanttest: State: %v", err)
	}
	return v
}

// race delivers n copies of cmd at once, so that every handler has run
// before any delivery commits: a transaction of the harness holds a lock
// on the inbox that lets the deliveries read it but not write their
// entries, until each of them waits on a lock (on the inbox, or on a row a
// sibling's handler changed). Then it lets them go and returns the
// replies.
func race(t *testing.T, h *Harness, cmd *saga.Command, n int) []Reply {
	t.Helper()
	ctx := t.Context()
	connect := func() *pgx.Conn {
		c, err := pgx.ConnectConfig(ctx, h.pool.Config().ConnConfig.Copy())
		if err != nil {
			t.Fatalf("participanttest: connect: %v", err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		return c
	}
	gate, watch := connect(), connect()
	tx, err := gate.Begin(ctx)
	if err != nil {
		t.Fatalf("participanttest: begin: %v", err)
	}
	// SHARE lets the deliveries read the inbox and blocks their inserts.
	if _, err := tx.Exec(ctx, `LOCK TABLE sagabox.saga_inbox IN SHARE MODE`); err != nil {
		t.Fatalf("participanttest: lock the inbox: %v", err)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		c := *cmd
		c.MessageID = uuid.NewString()
		wg.Go(func() { errs[i] = h.p.Process(ctx, &c) })
	}
	waiting, deadline := 0, time.Now().Add(RaceTimeout)
	for waiting < n && time.Now().Before(deadline) {
		if err := watch.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatalf("participanttest: watch the deliveries: %v", err)
		}
		if waiting < n {
			time.Sleep(2 * time.Millisecond) // polling the database, not waiting for it
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("participanttest: release the inbox: %v", err)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("participanttest: concurrent delivery: %v", err)
		}
	}
	if waiting < n {
		t.Fatalf("participanttest: only %d of %d deliveries were in flight together after %v (is the pool big enough for %d transactions?)",
			waiting, n, RaceTimeout, n)
	}
	return h.Replies(cmd.SagaID)
}
