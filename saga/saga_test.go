package saga_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// Invariant: a saga whose steps all succeed ends succeeded, each participant
// applied its effect exactly once, in step order, and what a reply returned
// (the reservation ID) is kept in the saga's data.
func TestHappyPath(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 100, "ann", 1000)
	w.runParticipants("g")
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	w.startOrchestrator(o)

	const n = 20
	var ids []string
	for i := range n {
		ids = append(ids, w.placeOrder(o, order{OrderID: fmt.Sprintf("o%d", i), Item: "book", Qty: 2, User: "ann", Amount: 10}))
	}
	statuses := w.waitFinished(ids, 30*time.Second)
	eff := w.effects()
	lost, dup, outOfOrder := 0, 0, 0
	for _, id := range ids {
		if statuses[id] != saga.StatusSucceeded {
			t.Errorf("saga %s: %s, want succeeded", id, statuses[id])
		}
		switch e := eff[id]; {
		case len(e) < 2:
			lost++
		case len(e) > 2:
			dup++
		case !slices.Equal(e, []string{"reserve", "debit"}):
			outOfOrder++
		}
	}
	if lost+dup+outOfOrder > 0 {
		t.Fatalf("effects: %d lost, %d duplicated, %d out of order", lost, dup, outOfOrder)
	}
	var stock, balance, approved int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT (SELECT qty FROM stock), (SELECT balance FROM credit),
		(SELECT count(*) FROM orders WHERE status = 'approved')`).Scan(&stock, &balance, &approved), "totals")
	if stock != 100-2*n || balance != 1000-10*n || approved != n {
		t.Fatalf("stock %d balance %d approved %d; want %d %d %d", stock, balance, approved, 100-2*n, 1000-10*n, n)
	}
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(ids[0]))
	testkit.Must(t, err, "get")
	var data order
	testkit.Must(t, jsonUnmarshal(info.Data, &data), "data")
	if data.ReservationID != "res-"+ids[0][:8] {
		t.Errorf("reservation ID from the reply not kept: %q", data.ReservationID)
	}
	if info.DefinitionVersion != 3 || len(info.History) != 3 || info.FinishedAt == nil {
		t.Errorf("info: version %d, %d history entries, finished %v", info.DefinitionVersion, len(info.History), info.FinishedAt)
	}
	for _, a := range info.History {
		if a.Outcome != saga.OutcomeSucceeded || a.FinishedAt == nil || a.Compensation {
			t.Errorf("history entry %+v", a)
		}
	}
	if d := w.duplicateCommands(); d != 0 {
		t.Fatalf("%d commands written twice", d)
	}
}

// Invariant: a saga starts with the caller's transaction or not at all: a
// rolled back order leaves no saga row and no command.
func TestStartIsAtomicWithTheBusinessChange(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 1)
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	boom := errors.New("payment form invalid")
	err := pgx.BeginFunc(w.ctx, w.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(w.ctx, `INSERT INTO orders (id, item) VALUES ('o1', 'book')`); err != nil {
			return err
		}
		if _, err := o.Start(w.ctx, tx, order{OrderID: "o1", Item: "book", Qty: 1}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("transaction: %v", err)
	}
	var sagas, cmds int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT (SELECT count(*) FROM sagabox.sagas), (SELECT count(*) FROM sagabox.outbox)`).Scan(&sagas, &cmds), "count")
	if sagas != 0 || cmds != 0 {
		t.Fatalf("after rollback: %d sagas, %d outbox rows; want none", sagas, cmds)
	}
	id := w.placeOrder(o, order{OrderID: "o2", Item: "book", Qty: 1})
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT (SELECT count(*) FROM sagabox.sagas WHERE id::text = $1),
		(SELECT count(*) FROM sagabox.outbox WHERE saga_id = $1 AND topic = $2)`, id, catalogTopic).Scan(&sagas, &cmds), "count")
	if sagas != 1 || cmds != 1 {
		t.Fatalf("after commit: %d sagas, %d commands; want 1 and 1", sagas, cmds)
	}
}

// Invariant: a failure at step i compensates exactly the steps that took
// effect, in reverse order, and the business state is back where it was.
func TestFailureAtEachStepCompensatesInReverse(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 100, "ann", 1000)
	w.seed("vetoed", 100, "poor", 5)
	w.runParticipants("g")
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	w.startOrchestrator(o)

	cases := []struct {
		name    string
		data    order
		effects []string
		trace   []string // step history: name and outcome, compensations prefixed "undo"
	}{
		{"reserve_rejected", order{Item: "book", Qty: 1000, User: "ann", Amount: 1},
			nil,
			[]string{"reserve_stock:rejected"}},
		{"debit_rejected", order{Item: "book", Qty: 1, User: "poor", Amount: 1000},
			[]string{"reserve", "release"},
			[]string{"reserve_stock:succeeded", "debit_credit:rejected", "undo reserve_stock:succeeded"}},
		{"pivot_rejected", order{Item: "vetoed", Qty: 1, User: "ann", Amount: 1},
			[]string{"reserve", "debit", "refund", "release"},
			[]string{"reserve_stock:succeeded", "debit_credit:succeeded", "approve_order:rejected", "undo debit_credit:succeeded", "undo reserve_stock:succeeded"}},
	}
	ids := map[string]string{}
	for i, c := range cases {
		c.data.OrderID = fmt.Sprintf("o%d", i)
		ids[c.name] = w.placeOrder(o, c.data)
	}
	all := make([]string, 0, len(ids))
	for _, id := range ids {
		all = append(all, id)
	}
	statuses := w.waitFinished(all, 30*time.Second)
	eff := w.effects()
	for _, c := range cases {
		id := ids[c.name]
		if statuses[id] != saga.StatusCompensated {
			t.Errorf("%s: status %s, want compensated", c.name, statuses[id])
		}
		if !slices.Equal(eff[id], c.effects) {
			t.Errorf("%s: effects %v, want %v", c.name, eff[id], c.effects)
		}
		info, err := saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(id))
		testkit.Must(t, err, "get")
		if got := trace(info); !slices.Equal(got, c.trace) {
			t.Errorf("%s: history %v, want %v", c.name, got, c.trace)
		}
	}
	var book, vetoed, ann, poor int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT (SELECT qty FROM stock WHERE item = 'book'), (SELECT qty FROM stock WHERE item = 'vetoed'),
		(SELECT balance FROM credit WHERE username = 'ann'), (SELECT balance FROM credit WHERE username = 'poor')`).Scan(&book, &vetoed, &ann, &poor), "totals")
	if book != 100 || vetoed != 100 || ann != 1000 || poor != 5 {
		t.Fatalf("not restored: book %d vetoed %d ann %d poor %d", book, vetoed, ann, poor)
	}
}

func trace(info *saga.Info) []string {
	var out []string
	for _, a := range info.History {
		name := a.Name
		if a.Compensation {
			name = "undo " + name
		}
		out = append(out, name+":"+string(a.Outcome))
	}
	return out
}

// Queue starts a saga in the caller's pgx.Batch: the business change, the
// saga and its first command in one round trip with BEGIN, all or nothing;
// and it refuses a definition whose first step is local (that
// step needs a transaction to run in).
func TestQueueStartsTheSagaInTheCallersBatch(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 1)
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	place := func(orderID string) (uuid.UUID, error) {
		b := &pgx.Batch{}
		b.BeginTx(pgx.TxOptions{})
		b.Queue(`INSERT INTO orders (id, item) VALUES ($1, 'book')`, orderID)
		id, err := o.Queue(w.ctx, b, order{OrderID: orderID, Item: "book", Qty: 1})
		if err != nil {
			return uuid.Nil, err
		}
		br := w.pool.SendBatch(w.ctx, b)
		tx := br.Tx()
		defer func() { _ = tx.Rollback(w.ctx) }()
		if err := br.Close(); err != nil {
			return id, err
		}
		return id, tx.Commit(w.ctx)
	}
	id, err := place("o1")
	testkit.Must(t, err, "place o1")
	var sagas, cmds int
	count := func(id uuid.UUID) {
		testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT (SELECT count(*) FROM sagabox.sagas WHERE id = $1),
			(SELECT count(*) FROM sagabox.outbox WHERE saga_id = $2 AND topic = $3)`, id, id.String(), catalogTopic).Scan(&sagas, &cmds), "count")
	}
	count(id)
	if sagas != 1 || cmds != 1 {
		t.Fatalf("after the batch: %d sagas, %d commands; want 1 and 1", sagas, cmds)
	}
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, id)
	testkit.Must(t, err, "get")
	if got, want := fmt.Sprint(trace(info)), "[reserve_stock:]"; info.Status != saga.StatusRunning || got != want {
		t.Fatalf("saga %s, history %s; want running, %s", info.Status, got, want)
	}
	// The same order again: the business insert fails, and nothing of the
	// second saga is left.
	id2, err := place("o1")
	if err == nil {
		t.Fatal("a duplicate order committed")
	}
	count(id2)
	if sagas != 0 || cmds != 0 {
		t.Fatalf("after the failed batch: %d sagas, %d commands; want none", sagas, cmds)
	}

	local := saga.MustDefinition("local_first", 1, saga.Step[order]{Name: "note",
		Local: func(context.Context, pgx.Tx, *order) error { return nil }})
	lo, err := saga.NewOrchestrator(w.runtime(nil), w.orchestratorConfig(), local)
	testkit.Must(t, err, "orchestrator")
	if _, err := lo.Queue(w.ctx, &pgx.Batch{}, order{}); !errors.Is(err, saga.ErrInvalidConfig) {
		t.Fatalf("Queue of a saga starting with a local step: %v, want ErrInvalidConfig", err)
	}
}
