package saga_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// sqlLog records what a pool sends: every Exec, Query and QueryRow, and
// every batch, is one round trip (the prepares pgx adds for statements it
// has not cached yet are not counted).
type sqlLog struct {
	mu    sync.Mutex
	trips int
	stmts []string
}

func (l *sqlLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.trips++
	l.stmts = append(l.stmts, d.SQL)
	return ctx
}

func (l *sqlLog) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (l *sqlLog) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.trips++
	for _, q := range d.Batch.QueuedQueries {
		l.stmts = append(l.stmts, q.SQL)
	}
	return ctx
}

func (l *sqlLog) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (l *sqlLog) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// reset returns the round trips and statements since the last reset.
func (l *sqlLog) reset() (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	trips, stmts := l.trips, l.stmts
	l.trips, l.stmts = 0, nil
	return trips, stmts
}

// count counts the statements that contain s (case-insensitive).
func count(stmts []string, s string) int {
	n := 0
	for _, st := range stmts {
		n += strings.Count(strings.ToUpper(st), strings.ToUpper(s))
	}
	return n
}

// tracedPool is a one-connection pool on the world's database that logs
// what it sends.
func (w *world) tracedPool() (*pgxpool.Pool, *sqlLog) {
	w.t.Helper()
	log := &sqlLog{}
	return w.onePool(log), log
}

func (w *world) participant(name string, pool *pgxpool.Pool, handlers ...saga.Handler) *saga.Participant {
	w.t.Helper()
	p, err := saga.NewParticipant(w.runtime(pool), saga.ParticipantConfig{Name: name, Handlers: handlers})
	testkit.Must(w.t, err, "participant")
	return p
}

// calls counts handler calls per saga.
type calls struct {
	mu sync.Mutex
	n  map[uuid.UUID]int
}

func (c *calls) inc(id uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[uuid.UUID]int{}
	}
	c.n[id]++
}

func (c *calls) get(id uuid.UUID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[id]
}

// inbox returns a participant's inbox entry as "OUTCOME:reason", or "" if
// there is none.
func (w *world) inbox(consumer, key string) string {
	w.t.Helper()
	var outcome, reason string
	err := w.pool.QueryRow(w.ctx, `SELECT outcome, reason FROM sagabox.saga_inbox WHERE consumer = $1 AND key = $2`, consumer, key).Scan(&outcome, &reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return ""
	}
	testkit.Must(w.t, err, "inbox")
	return outcome + ":" + reason
}

// Invariant (participant barrier, batched): in one batch, each command's
// effect is kept exactly when its handler succeeds, whatever the others do,
// including one whose SQL error aborted the transaction; a duplicate gets
// the stored reply without a handler call; a compensation before its action
// records the action as cancelled. The batch runs in one transaction, not
// in the one-by-one fallback.
func TestParticipantBatchMixedOutcomes(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	w.seed("book", 10, "ann", 0)
	pool, log := w.tracedPool()
	var n calls
	// Each handler has its own statement, so that the first round has
	// statements pgx has not prepared yet, after an aborted one.
	write := func(what string, ret func() error) saga.HandlerFunc {
		return func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (any, error) {
			n.inc(cmd.SagaID)
			if _, err := tx.Exec(ctx, `INSERT INTO effects (saga_id, what) VALUES ($1, $2) -- `+what, cmd.SagaID, what); err != nil {
				return nil, err
			}
			return nil, ret()
		}
	}
	p := w.participant("mixed", pool,
		saga.HandleFunc("ok", write("ok", func() error { return nil })),
		saga.HandleFunc("ok2", write("ok2", func() error { return nil })),
		saga.HandleFunc("refuse", write("refuse", func() error { return saga.Reject("no") })),
		saga.HandleFunc("flaky", write("flaky", func() error { return errors.New("warehouse down") })),
		saga.HandleFunc("undo", write("undo", func() error { return nil })),
		// Both violate the CHECK, which aborts the transaction: one as its
		// first statement, one after a write.
		saga.HandleFunc("sqlerr", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (any, error) {
			n.inc(cmd.SagaID)
			_, err := tx.Exec(ctx, `UPDATE stock SET qty = qty - $2 WHERE item = $1`, "book", 1000)
			return nil, err
		}),
		saga.HandleFunc("sqlerr2", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (any, error) {
			n.inc(cmd.SagaID)
			if err := effect(ctx, tx, cmd, "sqlerr2"); err != nil {
				return nil, err
			}
			_, err := tx.Exec(ctx, `UPDATE stock SET qty = qty - $2 WHERE item = $1`, "book", 1000)
			return nil, err
		}))

	for round := range 2 {
		ids := map[string]uuid.UUID{}
		for _, k := range []string{"ok", "refuse", "sqlerr", "ok2", "sqlerr2", "flaky", "dup", "compBefore", "compAfter"} {
			ids[k] = uuid.New()
		}
		// Processed before the batch: the duplicate, and the action the
		// compensation undoes.
		testkit.Must(t, p.Process(w.ctx, command(ids["dup"], "ok", 1, false)), "dup first")
		testkit.Must(t, p.Process(w.ctx, command(ids["compAfter"], "ok", 1, false)), "action")
		log.reset()
		cmds := []*saga.Command{
			command(ids["ok"], "ok", 1, false),
			command(ids["refuse"], "refuse", 1, false),
			command(ids["sqlerr"], "sqlerr", 1, false),
			command(ids["ok2"], "ok2", 1, false),
			command(ids["sqlerr2"], "sqlerr2", 1, false),
			command(ids["flaky"], "flaky", 1, false),
			command(ids["dup"], "ok", 2, false),
			command(ids["compBefore"], "undo", 1, true),
			command(ids["compAfter"], "undo", 1, true),
		}
		for i, err := range p.ProcessBatch(w.ctx, cmds) {
			testkit.Must(t, err, "round %d: command %d", round, i)
		}
		trips, stmts := log.reset()
		if got := count(stmts, "begin"); got != 1 {
			t.Fatalf("round %d: %d transactions, want 1 (the batch fell back to one by one): %q", round, got, stmts)
		}
		// Once pgx has prepared every statement, the savepoint statements
		// after the aborted handler ride with the next one's: 2 round trips
		// (begin with the inbox read, the writes with commit) plus one per
		// handler statement.
		if want := 2 + 8; round == 1 && trips != want {
			t.Fatalf("round %d: %d round trips, want %d: %q", round, trips, want, stmts)
		}

		eff := w.effects()
		want := map[string]string{
			"ok": "[ok]", "refuse": "[]", "sqlerr": "[]", "ok2": "[ok2]", "sqlerr2": "[]", "flaky": "[]",
			"dup": "[ok]", "compBefore": "[]", "compAfter": "[ok undo]",
		}
		for k, id := range ids {
			if got := fmt.Sprint(eff[id.String()]); got != want[k] {
				t.Errorf("round %d: %s: effects %s, want %s", round, k, got, want[k])
			}
		}
		wantReplies := map[string]string{
			"ok": "[do#1:SUCCESS]", "refuse": "[do#1:REJECTED]", "sqlerr": "[do#1:ERROR]", "ok2": "[do#1:SUCCESS]", "sqlerr2": "[do#1:ERROR]",
			"flaky": "[do#1:ERROR]", "dup": "[do#1:SUCCESS do#2:SUCCESS]", "compBefore": "[undo#1:SUCCESS]",
			"compAfter": "[do#1:SUCCESS undo#1:SUCCESS]",
		}
		for k, id := range ids {
			if got := fmt.Sprint(w.replies(id)); got != wantReplies[k] {
				t.Errorf("round %d: %s: replies %s, want %s", round, k, got, wantReplies[k])
			}
		}
		if got := n.get(ids["dup"]); got != 1 {
			t.Errorf("round %d: the duplicate's handler ran %d times, want 1", round, got)
		}
		if got := n.get(ids["compBefore"]); got != 0 {
			t.Errorf("round %d: a compensation before its action ran its handler", round)
		}
		wantInbox := map[string]string{
			ids["ok"].String() + "/0/action":               "SUCCESS:",
			ids["refuse"].String() + "/0/action":           "REJECTED:no",
			ids["sqlerr"].String() + "/0/action":           "",
			ids["flaky"].String() + "/0/action":            "",
			ids["sqlerr2"].String() + "/0/action":          "",
			ids["compBefore"].String() + "/0/action":       "REJECTED:cancelled: compensated before it ran",
			ids["compBefore"].String() + "/0/compensation": "SUCCESS:nothing to compensate",
			ids["compAfter"].String() + "/0/compensation":  "SUCCESS:",
		}
		for key, want := range wantInbox {
			if got := w.inbox("mixed", key); got != want {
				t.Errorf("round %d: inbox %s = %q, want %q", round, key, got, want)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	if got := w.stock(); got != 10 {
		t.Fatalf("stock %d, want 10", got)
	}
	// The late action, and the transient failures retried, in one batch.
	late := command(uuid.New(), "undo", 1, true)
	testkit.Must(t, p.Process(w.ctx, late), "compensation")
	errs := p.ProcessBatch(w.ctx, []*saga.Command{command(late.SagaID, "ok", 1, false), command(uuid.New(), "ok", 1, false)})
	testkit.Must(t, errors.Join(errs...), "late action")
	if got := fmt.Sprint(w.replies(late.SagaID)); got != "[undo#1:SUCCESS do#1:REJECTED]" {
		t.Fatalf("late action: replies %s", got)
	}
	if n.get(late.SagaID) != 0 {
		t.Fatal("the late action ran")
	}
}

// Invariant: a handler that bypasses the statements the savepoint rides on
// (tx.Conn(), CopyFrom) is still inside its savepoint: its changes are
// undone when it fails, kept when it succeeds.
func TestParticipantHandlerConnAndCopyFromRolledBack(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	viaConn := func(fail error) saga.HandlerFunc {
		return func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (any, error) {
			if _, err := tx.Conn().Exec(ctx, `INSERT INTO effects (saga_id, what) VALUES ($1, 'conn')`, cmd.SagaID); err != nil {
				return nil, err
			}
			return nil, fail
		}
	}
	viaCopy := func(fail error) saga.HandlerFunc {
		return func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (any, error) {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"effects"}, []string{"saga_id", "what"},
				pgx.CopyFromRows([][]any{{cmd.SagaID, "copy"}})); err != nil {
				return nil, err
			}
			return nil, fail
		}
	}
	p := w.participant("bypass", w.pool,
		saga.HandleFunc("conn_fails", viaConn(errors.New("down"))),
		saga.HandleFunc("conn_rejects", viaConn(saga.Reject("no"))),
		saga.HandleFunc("conn_ok", viaConn(nil)),
		saga.HandleFunc("copy_fails", viaCopy(errors.New("down"))),
		saga.HandleFunc("copy_rejects", viaCopy(saga.Reject("no"))),
		saga.HandleFunc("copy_ok", viaCopy(nil)))
	names := []string{"conn_fails", "copy_ok", "conn_rejects", "copy_fails", "conn_ok", "copy_rejects"}
	want := map[string]string{"conn_fails": "[]", "conn_rejects": "[]", "conn_ok": "[conn]",
		"copy_fails": "[]", "copy_rejects": "[]", "copy_ok": "[copy]"}
	check := func(how string, ids []uuid.UUID) {
		t.Helper()
		eff := w.effects()
		for i, id := range ids {
			if got := fmt.Sprint(eff[id.String()]); got != want[names[i]] {
				t.Errorf("%s: %s: effects %s, want %s", how, names[i], got, want[names[i]])
			}
		}
	}
	// One by one: the handler's first call is the bypass.
	var ids []uuid.UUID
	for _, name := range names {
		id := uuid.New()
		ids = append(ids, id)
		testkit.Must(t, p.Process(w.ctx, command(id, name, 1, false)), "process %s", name)
	}
	check("alone", ids)
	// In one batch: the bypass follows the previous handler's release.
	ids = nil
	var cmds []*saga.Command
	for _, name := range names {
		id := uuid.New()
		ids = append(ids, id)
		cmds = append(cmds, command(id, name, 1, false))
	}
	testkit.Must(t, errors.Join(p.ProcessBatch(w.ctx, cmds)...), "batch")
	check("batch", ids)
}

// Invariant: the savepoint costs nothing for a handler that does not touch
// the database, and a batch of k commands whose handlers do h statements
// each costs 2 + k·h round trips (begin with the inbox read; the inbox
// entries and replies with commit).
func TestParticipantBatchRoundTrips(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	pool, log := w.tracedPool()
	p := w.participant("trips", pool,
		saga.HandleFunc("pure", func(context.Context, pgx.Tx, *saga.Command) (any, error) { return nil, nil }),
		saga.HandleFunc("pure_fails", func(context.Context, pgx.Tx, *saga.Command) (any, error) {
			return nil, errors.New("down")
		}),
		saga.HandleFunc("two", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (any, error) {
			if err := effect(ctx, tx, cmd, "one"); err != nil {
				return nil, err
			}
			var n int
			return nil, tx.QueryRow(ctx, `SELECT count(*) FROM effects WHERE saga_id = $1`, cmd.SagaID).Scan(&n)
		}))
	batch := func(names ...string) []*saga.Command {
		var cmds []*saga.Command
		for _, name := range names {
			cmds = append(cmds, command(uuid.New(), name, 1, false))
		}
		return cmds
	}

	testkit.Must(t, p.Process(w.ctx, command(uuid.New(), "pure", 1, false)), "process")
	testkit.Must(t, errors.Join(p.ProcessBatch(w.ctx, batch("pure", "pure_fails", "pure"))...), "batch")
	if trips, stmts := log.reset(); count(stmts, "savepoint") != 0 {
		t.Fatalf("handlers that never touch the database sent savepoint statements: %q (%d round trips)", stmts, trips)
	}

	testkit.Must(t, errors.Join(p.ProcessBatch(w.ctx, batch("two", "two"))...), "warm up")
	log.reset()
	cmds := batch("two", "two", "pure", "two", "two", "two")
	testkit.Must(t, errors.Join(p.ProcessBatch(w.ctx, cmds)...), "batch")
	trips, stmts := log.reset()
	if want := 2 + 5*2; trips != want {
		t.Fatalf("%d round trips, want %d: %q", trips, want, stmts)
	}
	// One savepoint per handler that touched the database, released.
	if got := count(stmts, "SAVEPOINT sagabox_handler") - count(stmts, "RELEASE SAVEPOINT"); got != 5 {
		t.Fatalf("%d savepoints opened, want 5: %q", got, stmts)
	}
	if got := count(stmts, "RELEASE SAVEPOINT"); got != 5 {
		t.Fatalf("%d savepoints released, want 5: %q", got, stmts)
	}
	for _, cmd := range cmds {
		if got := fmt.Sprint(w.replies(cmd.SagaID)); got != "[do#1:SUCCESS]" {
			t.Fatalf("replies %s", got)
		}
	}
}

// Invariant: two participant instances (same name, same database) given
// the same command at the same moment, alone or in batches, apply it once
// and both answer with the same outcome.
func TestParticipantConcurrentDeliveriesTwoInstances(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	var n calls
	// meet holds the first handler of a shared command until the other
	// instance's handler runs it too: both are in flight at once, neither
	// committed. Later runs (the loser's retry alone) pass.
	var mu sync.Mutex
	arrivals := map[uuid.UUID]chan struct{}{}
	sharedIDs := map[uuid.UUID]bool{}
	meet := func(id uuid.UUID) {
		mu.Lock()
		if !sharedIDs[id] {
			mu.Unlock()
			return
		}
		ch, ok := arrivals[id]
		if !ok {
			ch = make(chan struct{})
			arrivals[id] = ch
			mu.Unlock()
			select {
			case <-ch:
			case <-time.After(time.Minute):
				t.Errorf("saga %s: the other instance never ran the shared command", id)
			}
			return
		}
		delete(sharedIDs, id)
		close(ch)
		mu.Unlock()
	}
	mk := func() *saga.Participant {
		return w.participant("twin", w.pool, saga.HandleFunc("apply", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (any, error) {
			n.inc(cmd.SagaID)
			if err := effect(ctx, tx, cmd, "apply"); err != nil {
				return nil, err
			}
			meet(cmd.SagaID) // both in flight
			if cmd.Step == 1 {
				return nil, saga.Reject("step 1 is refused")
			}
			return nil, nil
		}))
	}
	a, b := mk(), mk()
	for round := range 6 {
		shared := command(uuid.New(), "apply", 1, false)
		shared.Step = round % 2 // half rejected
		mu.Lock()
		sharedIDs[shared.SagaID] = true
		mu.Unlock()
		other := func() *saga.Command { return command(uuid.New(), "apply", 1, false) }
		// Each instance decodes its own copy of the command.
		copyB := *shared
		batchA, batchB := []*saga.Command{shared}, []*saga.Command{&copyB}
		if round >= 2 {
			batchA = []*saga.Command{other(), shared, other()}
			batchB = []*saga.Command{other(), other(), &copyB}
		}
		var wg sync.WaitGroup
		var errA, errB []error
		wg.Go(func() { errA = a.ProcessBatch(w.ctx, batchA) })
		wg.Go(func() { errB = b.ProcessBatch(w.ctx, batchB) })
		wg.Wait()
		testkit.Must(t, errors.Join(append(errA, errB...)...), "round %d", round)
		wantEffects := 1
		if shared.Step == 1 {
			wantEffects = 0 // rejected: undone
		}
		if got := len(w.effects()[shared.SagaID.String()]); got != wantEffects {
			t.Fatalf("round %d: %d effects, want %d", round, got, wantEffects)
		}
		replies := w.replies(shared.SagaID)
		if len(replies) != 2 || replies[0] != replies[1] {
			t.Fatalf("round %d: replies %v, want two identical ones", round, replies)
		}
		want := "do#1:SUCCESS"
		if shared.Step == 1 {
			want = "do#1:REJECTED"
		}
		if replies[0] != want {
			t.Fatalf("round %d: replies %v, want %s", round, replies, want)
		}
		for _, cmd := range append(batchA, batchB...) {
			if cmd.SagaID != shared.SagaID && len(w.effects()[cmd.SagaID.String()]) != 1 {
				t.Fatalf("round %d: another command of the batch lost or doubled", round)
			}
		}
	}
}
