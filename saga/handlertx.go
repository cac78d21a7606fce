package saga

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// The participant's savepoint. Each handler gets its own, released (or
// rolled back to and released) before the next one is opened, so they never
// nest.
const (
	savepointSQL  = `SAVEPOINT sagabox_handler`
	releaseSQL    = `RELEASE SAVEPOINT sagabox_handler`
	rollbackToSQL = `ROLLBACK TO SAVEPOINT sagabox_handler`
)

// errHandlerTxControl is what Commit and Rollback return to a handler.
var errHandlerTxControl = errors.New("saga: a handler must not commit or roll back its transaction: return nil, or an error to undo its changes")

// handlerTx is the pgx.Tx a participant's handlers get. It opens each
// handler's savepoint lazily, and sends the savepoint statements in the same
// round trip as the next statement: a handler that does h statements costs
// h round trips, not h+2, and one that never touches the database costs
// none.
//
// The savepoint statements wait in pending. Exec, Query, QueryRow and
// SendBatch put them in front of the handler's statements in one pgx.Batch;
// the rest (Conn, CopyFrom, LargeObjects, Begin, Prepare, and statements
// pgx runs differently outside a batch) first send them on their own, so a
// handler is always inside its savepoint whatever it calls.
//
// A batch that starts with pending statements can fail before running them:
// pgx prepares a statement it has not cached in a round trip of its own
// before the batch, and after a failed handler the transaction refuses that
// until the ROLLBACK TO has run. Then the pending statements are sent alone
// (the simple protocol prepares nothing) and the batch again. If they fail
// alone, the transaction is beyond repair: broken says why, and the
// participant gives up the transaction.
type handlerTx struct {
	tx      pgx.Tx
	ctx     context.Context // for Conn and LargeObjects, which take none
	pending []string
	opened  bool // the current handler's savepoint is open or pending
	broken  error
}

func newHandlerTx(ctx context.Context, tx pgx.Tx) *handlerTx {
	return &handlerTx{tx: tx, ctx: ctx}
}

// begin starts a handler. eager sends its savepoint at once, which the
// participant does when it retries a failed batch one command at a time:
// a handler statement pgx must prepare first, and that fails to prepare
// (bad SQL), aborts the transaction before a lazy savepoint was sent.
func (t *handlerTx) begin(ctx context.Context, eager bool) error {
	t.ctx = ctx
	if !eager {
		return nil
	}
	t.touch()
	return t.flush(ctx)
}

// end finishes a handler: its savepoint, if it had one, is to be released,
// after a rollback to it if the handler failed.
func (t *handlerTx) end(failed bool) {
	if !t.opened {
		return
	}
	t.opened = false
	if n := len(t.pending); n > 0 && t.pending[n-1] == savepointSQL {
		t.pending = t.pending[:n-1] // never sent
		return
	}
	if failed {
		t.pending = append(t.pending, rollbackToSQL)
	}
	t.pending = append(t.pending, releaseSQL)
}

// touch opens the handler's savepoint before its first statement.
func (t *handlerTx) touch() {
	if !t.opened {
		t.opened = true
		t.pending = append(t.pending, savepointSQL)
	}
}

// flush sends the pending statements on their own.
func (t *handlerTx) flush(ctx context.Context) error {
	if t.broken != nil || len(t.pending) == 0 {
		return t.broken
	}
	// Without arguments pgx uses the simple protocol: several statements,
	// one round trip, nothing to prepare.
	sql := strings.Join(t.pending, ";\n")
	t.pending = t.pending[:0]
	if _, err := t.tx.Exec(ctx, sql); err != nil {
		t.broken = fmt.Errorf("saga: handler savepoint: %w", err)
	}
	return t.broken
}

// send sends b with the pending statements in front, in one round trip,
// and returns the results of b's statements.
func (t *handlerTx) send(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if t.broken != nil {
		return pgx.FailedBatchResults(b, t.broken)
	}
	n := len(t.pending)
	if n == 0 {
		return t.tx.SendBatch(ctx, b)
	}
	// Copies: pgx annotates the queries it sends, and b may be sent again.
	all := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, n+b.Len())}
	for _, sql := range t.pending {
		all.Queue(sql)
	}
	for _, q := range b.QueuedQueries {
		all.QueuedQueries = append(all.QueuedQueries, &pgx.QueuedQuery{SQL: q.SQL, Arguments: q.Arguments, Fn: q.Fn})
	}
	br := t.tx.SendBatch(ctx, all)
	for i := range n {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			if i > 0 {
				// The first ones ran, then this one failed.
				t.broken = fmt.Errorf("saga: handler savepoint: %w", err)
				return pgx.FailedBatchResults(b, t.broken)
			}
			// Nothing ran (maybe pgx could not prepare a statement of b
			// while the transaction was aborted): the pending statements
			// alone, then b.
			if err := t.flush(ctx); err != nil {
				return pgx.FailedBatchResults(b, err)
			}
			return t.tx.SendBatch(ctx, b)
		}
	}
	t.pending = t.pending[:0]
	return br
}

// batchable reports whether a statement with args runs the same in a
// pgx.Batch: a batch takes no per-query options but a QueryRewriter.
func batchable(args []any) bool {
	for _, a := range args {
		switch a.(type) {
		case pgx.QueryExecMode, pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
			return false
		case pgx.QueryRewriter:
		default:
			return true
		}
	}
	return true
}

func (t *handlerTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	t.touch()
	// Without arguments pgx uses the simple protocol, which allows several
	// statements in one string; a batch does not.
	if len(t.pending) == 0 || len(args) == 0 || !batchable(args) {
		if err := t.flush(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
		return t.tx.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := t.send(ctx, b)
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

func (t *handlerTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	t.touch()
	if len(t.pending) == 0 || !batchable(args) {
		if err := t.flush(ctx); err != nil {
			return failedRows(err)
		}
		return t.tx.Query(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := t.send(ctx, b)
	rows, err := br.Query()
	if err != nil {
		rows.Close()
		_ = br.Close()
		return rows, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

func (t *handlerTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	t.touch()
	if len(t.pending) == 0 || !batchable(args) {
		if err := t.flush(ctx); err != nil {
			rows, _ := failedRows(err)
			return &batchRow{rows: rows}
		}
		return t.tx.QueryRow(ctx, sql, args...)
	}
	rows, _ := t.Query(ctx, sql, args...)
	return &batchRow{rows: rows}
}

func (t *handlerTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if b.Len() == 0 {
		return t.tx.SendBatch(ctx, b)
	}
	t.touch()
	return t.send(ctx, b)
}

func (t *handlerTx) Begin(ctx context.Context) (pgx.Tx, error) {
	t.touch()
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.tx.Begin(ctx)
}

func (t *handlerTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	t.touch()
	if err := t.flush(ctx); err != nil {
		return 0, err
	}
	return t.tx.CopyFrom(ctx, table, columns, src)
}

func (t *handlerTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	t.touch()
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.tx.Prepare(ctx, name, sql)
}

// LargeObjects and Conn cannot report an error: if the savepoint cannot be
// sent, the transaction is broken, and the participant rolls it back
// whatever the handler then does.
func (t *handlerTx) LargeObjects() pgx.LargeObjects {
	t.touch()
	_ = t.flush(t.ctx)
	return t.tx.LargeObjects()
}

func (t *handlerTx) Conn() *pgx.Conn {
	t.touch()
	_ = t.flush(t.ctx)
	return t.tx.Conn()
}

func (t *handlerTx) Commit(context.Context) error   { return errHandlerTxControl }
func (t *handlerTx) Rollback(context.Context) error { return errHandlerTxControl }

// batchRows are a query's rows read from a batch: closing them (or reading
// them to the end) closes the batch, which frees the connection.
type batchRows struct {
	pgx.Rows
	br     pgx.BatchResults
	err    error
	closed bool
}

func (r *batchRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

func (r *batchRows) Close() {
	if r.closed {
		return
	}
	r.closed = true
	r.Rows.Close()
	if err := r.br.Close(); err != nil && r.Rows.Err() == nil {
		r.err = err
	}
}

func (r *batchRows) Err() error {
	if err := r.Rows.Err(); err != nil {
		return err
	}
	return r.err
}

// batchRow is QueryRow's row, with the semantics of pgx's.
type batchRow struct{ rows pgx.Rows }

func (r *batchRow) Scan(dest ...any) error {
	rows := r.rows
	defer rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, d := range dest {
		if _, ok := d.(*pgtype.DriverBytes); ok {
			return errors.New("cannot scan into *pgtype.DriverBytes from QueryRow")
		}
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

// failedRows are closed rows that report err, like those pgx returns.
func failedRows(err error) (pgx.Rows, error) {
	return pgx.FailedBatchResults(&pgx.Batch{}, err).Query()
}
