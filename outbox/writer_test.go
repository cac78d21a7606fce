package outbox_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/jackc/pgx/v5"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

func countRows(t *testing.T, b *bundle) int {
	t.Helper()
	var n int
	testkit.Must(t, b.pool.QueryRow(testkit.Ctx(t), `SELECT count(*) FROM sagabox.outbox`).Scan(&n), "count")
	return n
}

// A refused message leaves nothing behind: the error names the field and the
// rest of the batch is not written either.
func TestWriteRefusesValueThatDoesNotFitItsSchema(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testkit.Ctx(t)
	tx, err := b.pool.Begin(ctx)
	testkit.Must(t, err, "begin")
	defer tx.Rollback(ctx)

	err = b.writer.Write(ctx, tx,
		outbox.Message{Topic: "orders", Key: "o1", Type: orderPlacedType, Value: orderPlaced{OrderID: "o1", Seq: 1}},
		outbox.Message{Topic: "orders", Key: "o1", Type: orderPlacedType, Value: map[string]any{"order_id": "o1", "seq": "two"}},
	)
	if !errors.Is(err, outbox.ErrInvalidMessage) {
		t.Fatalf("want ErrInvalidMessage, got %v", err)
	}
	var me *outbox.MessageError
	if !errors.As(err, &me) || me.Index != 1 || !strings.Contains(err.Error(), "seq") {
		t.Fatalf("error should name message 1 and field seq, got %v", err)
	}
	testkit.Must(t, tx.Commit(ctx), "commit")
	if n := countRows(t, b); n != 0 {
		t.Fatalf("refused batch wrote %d rows", n)
	}
}

func TestWriteRefusesBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testkit.Ctx(t)
	good := orderPlaced{OrderID: "x", Seq: 1}
	cases := map[string]outbox.Message{
		"no topic":        {Type: orderPlacedType, Value: good},
		"no value":        {Topic: "t", Type: orderPlacedType},
		"unknown type":    {Topic: "t", Type: "nope.Nope", Value: good},
		"no type":         {Topic: "t", Value: good},
		"reserved header": {Topic: "t", Type: orderPlacedType, Value: good, Headers: map[string]string{outbox.HeaderID: "x"}},
		"raw garbage":     {Topic: "t", Type: orderPlacedType, Value: outbox.RawValue{0xff, 0xff, 0xff}},
	}
	for name, m := range cases {
		err := b.writer.Write(ctx, b.pool, m)
		if !errors.Is(err, outbox.ErrInvalidMessage) {
			t.Errorf("%s: want ErrInvalidMessage, got %v", name, err)
		}
	}
	if n := countRows(t, b); n != 0 {
		t.Fatalf("refused messages wrote %d rows", n)
	}
}

func TestWriteIsAtomicWithTheCallersTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testkit.Ctx(t)
	errRollback := errors.New("roll back")
	for _, commit := range []bool{false, true} {
		err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			if err := b.writer.Write(ctx, tx, outbox.Message{Topic: "orders", Key: "k", Type: orderPlacedType, Value: orderPlaced{OrderID: "k"}}); err != nil {
				return err
			}
			if !commit {
				return errRollback
			}
			return nil
		})
		if err != nil && !errors.Is(err, errRollback) {
			t.Fatal(err)
		}
	}
	if n := countRows(t, b); n != 1 {
		t.Fatalf("want exactly the committed message, got %d rows", n)
	}
}

// Ids of one key follow commit order: a second writer of the same key waits
// for the first to commit before it draws its id. Without the per-key lock
// the second transaction would commit first with the higher id.
func TestWriteOrdersIDsOfAKeyByCommit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testkit.Ctx(t)
	var (
		mu      sync.Mutex
		commits []int64
	)
	committed := func(seq int64) {
		mu.Lock()
		commits = append(commits, seq)
		mu.Unlock()
	}
	first, err := b.pool.Begin(ctx)
	testkit.Must(t, err, "begin")
	testkit.Must(t, b.writer.Write(ctx, first, outbox.Message{Topic: "orders", Key: "k", Type: orderPlacedType, Value: orderPlaced{OrderID: "k", Seq: 1}}), "write")

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			return b.writer.Write(ctx, tx, outbox.Message{Topic: "orders", Key: "k", Type: orderPlacedType, Value: orderPlaced{OrderID: "k", Seq: 2}})
		})
		if err != nil {
			t.Error(err)
			return
		}
		committed(2)
	}()
	// The second transaction either waits for the key's lock (right) or
	// commits first (wrong); wait for one of the two, not for a time.
	testkit.Eventually(t, 30*time.Second, "the second writer waits for the key's lock or commits", func() bool {
		mu.Lock()
		n := len(commits)
		mu.Unlock()
		var waiting int
		_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting)
		return n > 0 || waiting > 0
	})
	// A second writer waiting for the key's lock commits after the first;
	// record the first's commit before it happens, or the second's
	// goroutine may record its own first on a busy machine.
	mu.Lock()
	secondFirst := len(commits) > 0
	if !secondFirst {
		commits = append(commits, 1)
	}
	mu.Unlock()
	testkit.Must(t, first.Commit(ctx), "commit")
	if secondFirst {
		committed(1)
	}
	wg.Wait()

	var got []int64
	rows, err := b.pool.Query(ctx, `SELECT value FROM sagabox.outbox ORDER BY id`)
	testkit.Must(t, err, "query")
	vals, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	testkit.Must(t, err, "collect")
	for _, v := range vals {
		var m orderPlaced
		testkit.Must(t, avro.Unmarshal(b.codec.MustSchema(orderPlacedType), v, &m), "decode")
		got = append(got, m.Seq)
	}
	if fmt.Sprint(got) != fmt.Sprint(commits) {
		t.Fatalf("id order %v differs from commit order %v", got, commits)
	}
}

// Queue puts the outbox write into the caller's batch: one round trip for
// the business change and its message, atomic with the transaction.
func TestQueueWritesWithTheBusinessBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testkit.Ctx(t)
	_, err := b.pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY)`)
	testkit.Must(t, err, "create")
	place := func(id string) error {
		return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			batch := &pgx.Batch{}
			batch.Queue(`INSERT INTO orders VALUES ($1)`, id)
			if err := b.writer.Queue(ctx, batch, outbox.Message{Topic: "orders", Key: id, Type: orderPlacedType, Value: orderPlaced{OrderID: id}}); err != nil {
				return err
			}
			return tx.SendBatch(ctx, batch).Close()
		})
	}
	testkit.Must(t, place("o1"), "place o1")
	if err := place("o1"); err == nil { // duplicate order: the whole transaction rolls back
		t.Fatal("duplicate order accepted")
	}
	if n := countRows(t, b); n != 1 {
		t.Fatalf("%d outbox rows, want the committed one only", n)
	}
	// A refused message queues nothing.
	batch := &pgx.Batch{}
	err = b.writer.Queue(ctx, batch, outbox.Message{Topic: "orders", Type: orderPlacedType, Value: map[string]any{"order_id": 1}})
	if !errors.Is(err, outbox.ErrInvalidMessage) || batch.Len() != 0 {
		t.Fatalf("refused message: err %v, %d queued", err, batch.Len())
	}
}

// Under DeferNotify's context a write does not wake the relay before the
// commit; the function it returns does, once, and only if something was
// written (with NotifyCommitted, or Notify when that is not set).
func TestDeferNotifyWakesAfterTheCommitOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testkit.Ctx(t)
	var early, late atomic.Int32
	for _, withCommitted := range []bool{true, false} {
		early.Store(0)
		late.Store(0)
		cfg := outbox.WriterConfig{Codec: b.codec, Notify: func() { early.Add(1) }}
		if withCommitted {
			cfg.NotifyCommitted = func() { late.Add(1) }
		}
		w, err := outbox.NewWriter(cfg)
		testkit.Must(t, err, "writer")
		dctx, committed := w.DeferNotify(ctx)
		testkit.Must(t, pgx.BeginFunc(dctx, b.pool, func(tx pgx.Tx) error {
			return w.Write(dctx, tx, outbox.Message{Topic: "orders", Key: "d", Type: orderPlacedType, Value: orderPlaced{OrderID: "d"}})
		}), "write")
		if early.Load() != 0 || late.Load() != 0 {
			t.Fatalf("NotifyCommitted set: %v: woken before the commit (Notify %d, NotifyCommitted %d)", withCommitted, early.Load(), late.Load())
		}
		committed()
		wantEarly, wantLate := int32(0), int32(1)
		if !withCommitted {
			wantEarly, wantLate = 1, 0
		}
		if early.Load() != wantEarly || late.Load() != wantLate {
			t.Fatalf("NotifyCommitted set: %v: after the commit Notify %d, NotifyCommitted %d; want %d, %d", withCommitted, early.Load(), late.Load(), wantEarly, wantLate)
		}
		// Nothing written under a context: nothing to wake for. And a
		// write under a plain context still notifies at once.
		_, idle := w.DeferNotify(ctx)
		idle()
		testkit.Must(t, w.Write(ctx, b.pool, outbox.Message{Topic: "orders", Key: "p", Type: orderPlacedType, Value: orderPlaced{OrderID: "p"}}), "plain write")
		if early.Load() != wantEarly+1 || late.Load() != wantLate {
			t.Fatalf("NotifyCommitted set: %v: Notify %d, NotifyCommitted %d after an idle DeferNotify and a plain write", withCommitted, early.Load(), late.Load())
		}
	}
}
