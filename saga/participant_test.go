package saga_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// replies returns the outcomes of the replies the participant wrote for a
// saga, in order.
func (w *world) replies(sagaID uuid.UUID) []string {
	w.t.Helper()
	rows, err := w.pool.Query(w.ctx, `SELECT headers FROM sagabox.outbox WHERE saga_id = $1 AND headers ? $2 ORDER BY id`, sagaID.String(), saga.HeaderOutcome)
	testkit.Must(w.t, err, "replies")
	defer rows.Close()
	var out []string
	for rows.Next() {
		var h map[string]string
		testkit.Must(w.t, rows.Scan(&h), "scan")
		out = append(out, fmt.Sprintf("%v#%v:%v", map[string]string{"false": "do", "true": "undo"}[h[saga.HeaderCompensation]], h[saga.HeaderAttempt], h[saga.HeaderOutcome]))
	}
	return out
}

func command(id uuid.UUID, name string, attempt int, compensation bool) *saga.Command {
	return &saga.Command{SagaID: id, SagaType: "create_order", Step: 0, Attempt: attempt, Compensation: compensation,
		Name: name, ReplyTopic: replyTopic, PayloadType: "test.catalog.ReserveStock", Payload: encodeReserve(2)}
}

func encodeReserve(qty int) []byte {
	_, b, err := testCodec().Encode("test.catalog.ReserveStock", reserveStock{Item: "book", Qty: qty})
	if err != nil {
		panic(err)
	}
	return b
}

func (w *world) stock() int {
	var q int
	testkit.Must(w.t, w.pool.QueryRow(w.ctx, `SELECT qty FROM stock WHERE item = 'book'`).Scan(&q), "stock")
	return q
}

// Invariant (participant barrier): a command delivered again, or retried
// with a new attempt, has no second effect and gets the stored reply again.
func TestParticipantDuplicateCommandGetsStoredReply(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	w.seed("book", 10, "ann", 0)
	catalog, _ := w.participants("g")
	id := uuid.New()
	for _, attempt := range []int{1, 1, 2} {
		testkit.Must(t, catalog.Process(w.ctx, command(id, "reserve_stock", attempt, false)), "process")
	}
	if got := w.stock(); got != 8 {
		t.Fatalf("stock %d, want 8: the duplicate reserved again", got)
	}
	if got, want := w.replies(id), []string{"do#1:SUCCESS", "do#1:SUCCESS", "do#2:SUCCESS"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("replies %v, want %v", got, want)
	}
	// A rejection is stored too: the retry is rejected again without
	// running the handler.
	id2 := uuid.New()
	big := command(id2, "reserve_stock", 1, false)
	big.Payload = encodeReserve(100)
	testkit.Must(t, catalog.Process(w.ctx, big), "process")
	w.seed("book", 1000, "ann", 0) // now there would be stock
	big.Attempt = 2
	testkit.Must(t, catalog.Process(w.ctx, big), "process")
	if got := w.stock(); got != 1000 {
		t.Fatalf("stock %d: a retried rejected command ran again", got)
	}
	if got, want := w.replies(id2), []string{"do#1:REJECTED", "do#2:REJECTED"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("replies %v, want %v", got, want)
	}
}

// Invariant (participant barrier): a compensation for an action that never
// ran succeeds and does nothing, and the action arriving after it does
// nothing either.
func TestParticipantCompensationBeforeAction(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	w.seed("book", 10, "ann", 0)
	catalog, _ := w.participants("g")
	id := uuid.New()
	testkit.Must(t, catalog.Process(w.ctx, command(id, "release_stock", 1, true)), "compensate")
	testkit.Must(t, catalog.Process(w.ctx, command(id, "reserve_stock", 1, false)), "late action")
	testkit.Must(t, catalog.Process(w.ctx, command(id, "release_stock", 2, true)), "compensate again")
	if got := w.stock(); got != 10 {
		t.Fatalf("stock %d, want 10 (nothing happened)", got)
	}
	if eff := w.effects()[id.String()]; len(eff) != 0 {
		t.Fatalf("effects %v, want none", eff)
	}
	if got, want := w.replies(id), []string{"undo#1:SUCCESS", "do#1:REJECTED", "undo#2:SUCCESS"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("replies %v, want %v", got, want)
	}
}

// Invariant: a compensation after the action undoes it exactly once, and a
// transient handler failure keeps nothing and answers ERROR (so the
// orchestrator backs off and retries).
func TestParticipantCompensationAfterActionAndTransientFailure(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	w.seed("book", 10, "ann", 0)
	catalog, _ := w.participants("g")
	id := uuid.New()
	testkit.Must(t, catalog.Process(w.ctx, command(id, "reserve_stock", 1, false)), "action")
	w.setFault("release_fails", true)
	testkit.Must(t, catalog.Process(w.ctx, command(id, "release_stock", 1, true)), "failing compensation")
	if got := w.stock(); got != 8 {
		t.Fatalf("stock %d after a failed compensation, want 8", got)
	}
	w.setFault("release_fails", false)
	testkit.Must(t, catalog.Process(w.ctx, command(id, "release_stock", 2, true)), "compensation")
	testkit.Must(t, catalog.Process(w.ctx, command(id, "release_stock", 2, true)), "duplicate compensation")
	if got := w.stock(); got != 10 {
		t.Fatalf("stock %d, want 10", got)
	}
	if got, want := w.replies(id), []string{"do#1:SUCCESS", "undo#1:ERROR", "undo#2:SUCCESS", "undo#2:SUCCESS"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("replies %v, want %v", got, want)
	}
	if eff := w.effects()[id.String()]; fmt.Sprint(eff) != "[reserve release]" {
		t.Fatalf("effects %v", eff)
	}
}

// Invariant: concurrent deliveries of the same command apply it once.
func TestParticipantConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	w.seed("book", 1000, "ann", 0)
	catalog, _ := w.participants("g")
	id := uuid.New()
	errs := make(chan error, 8)
	for range 8 {
		go func() { errs <- catalog.Process(w.ctx, command(id, "reserve_stock", 1, false)) }()
	}
	for range 8 {
		testkit.Must(t, <-errs, "process")
	}
	if got := w.stock(); got != 998 {
		t.Fatalf("stock %d, want 998: %d reservations instead of 1", got, (1000-got)/2)
	}
}

// Invariant (idempotent consumer): a message handled twice through the
// Inbox middleware has one effect; a handler error keeps nothing, so the
// redelivery runs it again.
func TestInboxMiddleware(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	inbox := saga.NewInbox(w.pool, "mailer")
	calls := 0
	fail := true
	h := inbox.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		calls++
		tx, ok := saga.Tx(msg.Context())
		if !ok {
			return nil, errors.New("no transaction in the context")
		}
		if _, err := tx.Exec(msg.Context(), `INSERT INTO effects (saga_id, what) VALUES ($1, 'mail')`, uuid.Nil); err != nil {
			return nil, err
		}
		if fail {
			fail = false
			return nil, errors.New("smtp down")
		}
		return nil, nil
	})
	msg := message.NewMessage("0190a0b0-0000-7000-8000-000000000001", []byte("x"))
	msg.SetContext(w.ctx)
	if _, err := h(msg); err == nil {
		t.Fatal("handler error swallowed")
	}
	for range 3 {
		_, err := h(msg)
		testkit.Must(t, err, "handle")
	}
	var n int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT count(*) FROM effects`).Scan(&n), "count")
	if n != 1 || calls != 2 {
		t.Fatalf("%d effects after %d handler calls; want 1 effect, 2 calls (one failed, one applied)", n, calls)
	}
}

// Invariant: the cleaner deletes finished sagas and inbox entries past the
// retention, never failed or running sagas.
func TestCleanup(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	var ids []string
	for i := range 4 {
		ids = append(ids, w.placeOrder(o, order{OrderID: fmt.Sprintf("o%d", i), Item: "book"}))
	}
	_, err := w.pool.Exec(w.ctx, `UPDATE sagabox.sagas SET status = s.st, finished_at = now() - interval '2 hours'
		FROM (VALUES ($1::uuid, 'succeeded'), ($2::uuid, 'compensated'), ($3::uuid, 'failed')) AS s(id, st) WHERE sagas.id = s.id`,
		ids[0], ids[1], ids[2])
	testkit.Must(t, err, "age sagas")
	_, err = w.pool.Exec(w.ctx, `INSERT INTO sagabox.saga_inbox (consumer, key, processed_at) VALUES ('c', 'old', now() - interval '2 hours'), ('c', 'new', now())`)
	testkit.Must(t, err, "inbox")
	n, err := saga.NewAdmin(w.pool).Cleanup(w.ctx, time.Hour)
	testkit.Must(t, err, "cleanup")
	var left []string
	rows, _ := w.pool.Query(w.ctx, `SELECT id::text FROM sagabox.sagas ORDER BY id`)
	left, err = pgx.CollectRows(rows, pgx.RowTo[string])
	testkit.Must(t, err, "left")
	var inbox int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.saga_inbox`).Scan(&inbox), "inbox")
	var steps int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.saga_steps WHERE saga_id = ANY($1::uuid[])`, ids[:2]).Scan(&steps), "steps")
	if n != 3 || len(left) != 2 || inbox != 1 || steps != 0 {
		t.Fatalf("deleted %d; left sagas %v, inbox %d, history of deleted %d", n, left, inbox, steps)
	}
	if _, err := saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(ids[2])); err != nil {
		t.Fatalf("failed saga deleted: %v", err)
	}
	if _, err := saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(ids[0])); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("finished saga kept: %v", err)
	}
}

// Invariant: List finds sagas stuck past a deadline.
func TestListStuck(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	old := w.placeOrder(o, order{OrderID: "o1", Item: "book"})
	w.placeOrder(o, order{OrderID: "o2", Item: "book"})
	_, err := w.pool.Exec(w.ctx, `UPDATE sagabox.sagas SET updated_at = now() - interval '1 hour' WHERE id = $1`, old)
	testkit.Must(t, err, "age")
	page, err := saga.NewAdmin(w.pool).List(w.ctx, saga.ListOptions{StuckFor: 10 * time.Minute, Type: "create_order"})
	list := page.Sagas
	testkit.Must(t, err, "list")
	if len(list) != 1 || list[0].ID.String() != old {
		t.Fatalf("stuck: %+v", list)
	}
}

// Invariant: an operator abort of a running saga compensates the step in
// flight (its command is out and may run) and refuses a saga past its pivot.
func TestAbort(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	id := uuid.MustParse(w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 1}))
	testkit.Must(t, o.Abort(w.ctx, id, "customer cancelled"), "abort")
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, id)
	testkit.Must(t, err, "get")
	if info.Status != saga.StatusCompensating || info.Step != 0 || !info.Compensation || info.Deadline == nil {
		t.Fatalf("after abort: %+v", info)
	}
	if got, want := fmt.Sprint(trace(info)), "[reserve_stock:aborted undo reserve_stock:]"; got != want {
		t.Fatalf("history %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(actions(info)), "[abort:done::customer cancelled]"; got != want {
		t.Fatalf("actions %s, want %s", got, want)
	}
	var cmds int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.outbox WHERE saga_id = $1 AND headers ? $2`, id.String(), saga.HeaderCommand).Scan(&cmds), "count")
	if cmds != 2 {
		t.Fatalf("%d commands, want 2 (reserve, release)", cmds)
	}
	if err := o.Abort(w.ctx, id, "again"); !errors.Is(err, saga.ErrWrongState) {
		t.Fatalf("second abort: %v, want ErrWrongState", err)
	}
	if err := o.Retry(w.ctx, id); !errors.Is(err, saga.ErrWrongState) {
		t.Fatalf("retry of a compensating saga: %v, want ErrWrongState", err)
	}
	if err := o.Abort(w.ctx, uuid.New(), "nobody"); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("abort of an unknown saga: %v, want ErrNotFound", err)
	}
}

// Migration 003: an attempt's history row is written when it ends, and the
// attempt in flight is read from the saga's row. An attempt that started
// before the upgrade already has its row (written when it started): ending
// it completes that row instead of failing on the primary key.
func TestAttemptStartedBeforeMigration003EndsInItsOwnRow(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	o := w.orchestrator(orderDefinition(tuning{}), nil)
	id := uuid.MustParse(w.placeOrder(o, order{OrderID: "o1", Item: "book", Qty: 1}))
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, id)
	testkit.Must(t, err, "get")
	if got, want := fmt.Sprint(trace(info)), "[reserve_stock:]"; got != want {
		t.Fatalf("history of the running saga %s, want %s (the attempt in flight)", got, want)
	}
	var rows int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT count(*) FROM sagabox.saga_steps WHERE saga_id = $1`, id).Scan(&rows), "count")
	if rows != 0 {
		t.Fatalf("%d history rows for an attempt in flight, want 0", rows)
	}
	// What the code before migration 003 wrote when the command went out.
	_, err = w.pool.Exec(w.ctx, `INSERT INTO sagabox.saga_steps (saga_id, step, compensation, attempt, name, started_at)
		SELECT id, 0, false, 1, 'reserve_stock', step_started_at FROM sagabox.sagas WHERE id = $1`, id)
	testkit.Must(t, err, "old-style row")
	testkit.Must(t, o.Abort(w.ctx, id, "customer cancelled"), "abort")
	info, err = saga.NewAdmin(w.pool).Get(w.ctx, id)
	testkit.Must(t, err, "get")
	if got, want := fmt.Sprint(trace(info)), "[reserve_stock:aborted undo reserve_stock:]"; got != want {
		t.Fatalf("history %s, want %s", got, want)
	}
	if a := info.History[0]; a.FinishedAt == nil || !a.StartedAt.Before(*a.FinishedAt) {
		t.Fatalf("ended attempt: %+v", a)
	}
}

// Invariant (conventions): NewParticipant validates its config and names
// the field; zero is the default, a negative value or a command registered
// twice is ErrInvalidConfig; it attaches its Run to the runtime; a second
// Run is an error.
func TestNewParticipantConfig(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	ok := saga.HandleFunc("a", func(context.Context, pgx.Tx, *saga.Command) (any, error) { return nil, nil })
	for _, tc := range []struct {
		cfg  saga.ParticipantConfig
		want string
	}{
		{saga.ParticipantConfig{Handlers: []saga.Handler{ok}}, "Name is required"},
		{saga.ParticipantConfig{Name: "p"}, "Handlers is empty"},
		{saga.ParticipantConfig{Name: "p", Handlers: []saga.Handler{{}}}, "Handlers[0] is empty"},
		{saga.ParticipantConfig{Name: "p", Handlers: []saga.Handler{ok, ok}}, `command "a" has two handlers`},
		{saga.ParticipantConfig{Name: "p", Handlers: []saga.Handler{ok}, Retention: -1}, "Retention is negative"},
		{saga.ParticipantConfig{Name: "p", Handlers: []saga.Handler{ok}, Batch: -1}, "Batch is negative"},
		{saga.ParticipantConfig{Name: "p", Handlers: []saga.Handler{ok}, CleanupInterval: -1}, "CleanupInterval is negative"},
		{saga.ParticipantConfig{Name: "p", Handlers: []saga.Handler{ok}, NackResendSleep: -1}, "NackResendSleep is negative"},
	} {
		_, err := saga.NewParticipant(w.runtime(nil), tc.cfg)
		if !errors.Is(err, saga.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want ErrInvalidConfig saying %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := saga.NewParticipant(nil, saga.ParticipantConfig{Name: "p", Handlers: []saga.Handler{ok}}); !errors.Is(err, saga.ErrInvalidConfig) {
		t.Errorf("no runtime: %v", err)
	}
	d := saga.ParticipantConfig{Name: "p", CommandTopic: "t"}.WithDefaults()
	if d.ConsumerGroup != "sagabox-participant-p" || d.DeadLetterTopic != "t.dlq" || d.Batch != saga.DefaultParticipantBatch ||
		d.Retention != saga.DefaultRetention || d.CleanupInterval != saga.DefaultCleanupInterval || d.NackResendSleep != saga.DefaultNackResendSleep {
		t.Errorf("defaults: %+v", d)
	}
	rt := w.runtime(nil)
	p, err := saga.NewParticipant(rt, saga.ParticipantConfig{Name: "p", Handlers: []saga.Handler{ok}})
	testkit.Must(t, err, "participant")
	if rt.attached.Load() != 1 {
		t.Fatalf("NewParticipant attached %d parts, want 1", rt.attached.Load())
	}
	if err := p.Run(w.ctx); !errors.Is(err, saga.ErrInvalidConfig) {
		t.Fatalf("Run without Kafka: %v", err)
	}
}

// Invariant: a second Run of one participant returns an error at once,
// while the first goes on.
func TestParticipantRunTwice(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 1)
	catalog, _ := w.participants("twice")
	ctx, cancel := context.WithCancel(w.ctx)
	defer cancel()
	done := make(chan error, 2)
	for range 2 {
		go func() { done <- catalog.Run(ctx) }()
	}
	// Whichever started second returns at once; the other runs until ctx
	// is done.
	if err := <-done; err == nil || !strings.Contains(err.Error(), "Run was called twice") {
		t.Fatalf("second Run: %v", err)
	}
	cancel()
	testkit.Must(t, <-done, "first Run")
}

// Invariant: HandleCommand rejects, with a reason naming the command, a
// payload that does not decode or whose schema is not the handler's type.
func TestHandleCommandRejectsABadPayload(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	var calls int
	p := w.participant("typed", w.pool, saga.HandleCommand("reserve_stock",
		func(context.Context, pgx.Tx, *saga.Command, reserveStock) (any, error) { calls++; return nil, nil }))
	cut := command(uuid.New(), "reserve_stock", 1, false)
	cut.Payload = cut.Payload[:1]
	testkit.Must(t, p.Process(w.ctx, cut), "process")
	if got := w.inbox("typed", cut.SagaID.String()+"/0/action"); !strings.HasPrefix(got, "REJECTED:reserve_stock: the payload does not decode") {
		t.Fatalf("inbox %q", got)
	}
	if calls != 0 {
		t.Fatal("the handler ran on a payload that does not decode")
	}
}
