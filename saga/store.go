package saga

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/tracing"
	"github.com/sagabox/sagabox/outbox"
)

// Querier is what the read-only operator calls need: a pool, a connection
// or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

const stateColumns = `id, saga_type, definition_version, status, step, attempt, compensation,
	deadline, next_retry_at, step_started_at, step_name, last_error, version, correlation_id, failure, data`

func scanState(row pgx.Row, s *state, data *[]byte, extra ...any) error {
	var status string
	var deadline, retry, started *time.Time
	var failure []byte
	err := row.Scan(append([]any{&s.ID, &s.Type, &s.DefVersion, &status, &s.Step, &s.Attempt, &s.Compensation,
		&deadline, &retry, &started, &s.StepName, &s.LastError, &s.Version, &s.CorrelationID, &failure, data}, extra...)...)
	s.Status = Status(status)
	s.Deadline, s.NextRetryAt, s.StepStartedAt = derefTime(deadline), derefTime(retry), derefTime(started)
	if err == nil {
		s.Failure, err = decodeFailure(failure)
	}
	return err
}

// decodeFailure decodes the failure column; NULL is nil.
func decodeFailure(b []byte) (*Failure, error) {
	if b == nil {
		return nil, nil
	}
	f := &Failure{}
	if err := json.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("saga: failure: %w", err)
	}
	return f, nil
}

// encodeFailure is the failure column's value: NULL for nil.
func encodeFailure(f *Failure) (any, error) {
	if f == nil {
		return nil, nil
	}
	b, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("saga: marshal failure: %w", err)
	}
	return string(b), nil
}

func derefTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// batchExecer queues statements in a pgx.Batch, so that the outbox write
// travels in the same round trip as the saga's state change.
type batchExecer struct{ b *pgx.Batch }

func (x batchExecer) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	x.b.Queue(sql, args...)
	return pgconn.CommandTag{}, nil
}

// histOp is one attempt of a step or compensation that this transaction
// started or ended. Only ended attempts are written to saga_steps: the
// attempt in flight lives in the saga's row (step, attempt, step_started_at,
// step_name), so an attempt costs one insert, not an insert and an update.
type histOp struct {
	step         int
	compensation bool
	attempt      int
	name         string
	startedAt    time.Time
	ended        bool
	endedAt      time.Time
	outcome      Outcome
	errText      string
	latency      time.Duration
}

// txEnv is the machine's environment inside one database transaction. It
// collects the history and the commands and writes them, with the saga's
// row, in one batch at flush.
type txEnv[D any] struct {
	tx       pgx.Tx
	hist     []*histOp
	cmds     []outCommand
	finishes []Status
	// For late replies only: the writer of their compensations, and what
	// became of them (for the metrics).
	writer *outbox.Writer
	lates  []lateNote
	// asked counts the re-asks of steps whose outcome is unknown.
	asked int
}

// lateNote is a late reply recorded in the transaction, for the log and
// the metrics after the commit.
type lateNote struct {
	sagaID uuid.UUID
	LateReply
}

func (e *txEnv[D]) now() time.Time { return time.Now() }

func (e *txEnv[D]) runLocal(ctx context.Context, fn LocalFunc[D], data *D) error {
	sp, err := e.tx.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(ctx, sp, data); err != nil {
		if rbErr := sp.Rollback(ctx); rbErr != nil {
			return errors.Join(err, rbErr)
		}
		return err
	}
	return sp.Commit(ctx)
}

func (e *txEnv[D]) send(cmd outCommand) { e.cmds = append(e.cmds, cmd) }

func (e *txEnv[D]) attemptStarted(step int, comp bool, attempt int, name string, at time.Time) {
	e.hist = append(e.hist, &histOp{step: step, compensation: comp, attempt: attempt, name: name, startedAt: at})
}

func (e *txEnv[D]) attemptEnded(step int, comp bool, attempt int, name string, outcome Outcome, errText string, at time.Time, latency time.Duration) {
	for _, h := range e.hist {
		if h.step == step && h.compensation == comp && h.attempt == attempt {
			h.ended, h.endedAt, h.outcome, h.errText, h.latency = true, at, outcome, errText, latency
			return
		}
	}
	// Started in an earlier transaction: the machine measures latency from
	// the row's step_started_at, so this is when it started.
	e.hist = append(e.hist, &histOp{step: step, compensation: comp, attempt: attempt, name: name,
		startedAt: at.Add(-latency), ended: true, endedAt: at, outcome: outcome, errText: errText, latency: latency})
}

func (e *txEnv[D]) finished(s *state) { e.finishes = append(e.finishes, s.Status) }

func (e *txEnv[D]) askAgain() { e.asked++ }

// knownOutcomeSQL walks saga_steps' primary key (saga, step, phase).
const knownOutcomeSQL = `SELECT EXISTS (SELECT 1 FROM sagabox.saga_steps
WHERE saga_id = $1 AND step = $2 AND compensation = $3 AND outcome IN ('succeeded', 'rejected'))`

func (e *txEnv[D]) knownOutcome(ctx context.Context, s *state, step int, comp bool) (bool, error) {
	for _, h := range e.hist {
		if h.ended && h.step == step && h.compensation == comp && (h.outcome == OutcomeSucceeded || h.outcome == OutcomeRejected) {
			return true, nil
		}
	}
	var known bool
	if err := e.tx.QueryRow(ctx, knownOutcomeSQL, [16]byte(s.ID), step, comp).Scan(&known); err != nil {
		return false, fmt.Errorf("saga %s: history: %w", s.ID, err)
	}
	return known, nil
}

const insertLateSQL = `INSERT INTO sagabox.saga_late_replies
	(saga_id, step, compensation, attempt, name, outcome, reason, disposition, note, received_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`

// late writes the late reply's row, and its compensation to the outbox,
// at once: this path is rare, and the saga's row may not change.
func (e *txEnv[D]) late(ctx context.Context, s *state, l LateReply, cmd *outCommand) error {
	if _, err := e.tx.Exec(ctx, insertLateSQL, [16]byte(s.ID), l.Step, l.Compensation, l.Attempt, l.Name, string(l.Outcome),
		l.Reason, string(l.Disposition), l.Note, l.ReceivedAt); err != nil {
		return fmt.Errorf("saga %s: record late reply: %w", s.ID, err)
	}
	if cmd != nil {
		if e.writer == nil {
			return fmt.Errorf("saga %s: late reply: no outbox writer to send %s", s.ID, cmd.Envelope.Command)
		}
		msg := commandMessage(cmd.Topic, &cmd.Envelope)
		msg.CorrelationID = s.CorrelationID
		if err := e.writer.Write(ctx, e.tx, msg); err != nil {
			return fmt.Errorf("saga %s: late reply: send %s: %w", s.ID, cmd.Envelope.Command, err)
		}
	}
	e.lates = append(e.lates, lateNote{sagaID: s.ID, LateReply: l})
	return nil
}

const insertSagaSQL = `
INSERT INTO sagabox.sagas (id, saga_type, definition_version, status, step, attempt, compensation,
	data, deadline, next_retry_at, step_started_at, step_name, last_error, correlation_id, finished_at, failure,
	traceparent, tracestate)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, CASE WHEN $15 THEN now() END, $16::jsonb,
	nullif($17, ''), nullif($18, ''))`

// The row lock taken at load makes the version check redundant, but it
// costs nothing and turns any mistake into an error instead of a lost update.
// While an operator request (admin_request, see admin.go) waits, the saga
// stays due (next_retry_at now) whatever a reply did to it, so that the
// timer poll carries the request out; the poll clears the request first.
const updateSagaSQL = `
UPDATE sagabox.sagas SET status = $3, step = $4, attempt = $5, compensation = $6, data = $7,
	deadline = $8, next_retry_at = CASE WHEN admin_request IS NULL THEN $9 ELSE now() END, step_started_at = $10, step_name = $11, last_error = $12,
	version = version + 1, updated_at = now(), finished_at = CASE WHEN $13 THEN now() END,
	failure = $14::jsonb
WHERE id = $1 AND version = $2`

// insertStepsSQL writes ended attempts. The conflict clause only matters
// for attempts started before migration 003, whose row was inserted when
// they started.
const insertStepsSQL = `
INSERT INTO sagabox.saga_steps (saga_id, step, compensation, attempt, name, started_at, finished_at, outcome, error)
SELECT * FROM unnest($1::uuid[], $2::int4[], $3::bool[], $4::int4[], $5::text[], $6::timestamptz[],
	$7::timestamptz[], $8::text[], $9::text[])
ON CONFLICT (saga_id, step, compensation, attempt) DO UPDATE SET finished_at = excluded.finished_at,
	outcome = excluded.outcome, error = excluded.error`

const insertStepSQL = `
INSERT INTO sagabox.saga_steps (saga_id, step, compensation, attempt, name, started_at, finished_at, outcome, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (saga_id, step, compensation, attempt) DO UPDATE SET finished_at = excluded.finished_at,
	outcome = excluded.outcome, error = excluded.error`

// flush writes the saga's row (insert for a new saga), its history and its
// commands in one round trip.
func (e *txEnv[D]) flush(ctx context.Context, w *outbox.Writer, s *state, data *D, insert bool, causation string) error {
	b := &pgx.Batch{}
	if err := e.queue(ctx, b, w, s, data, insert, causation); err != nil {
		return err
	}
	return sendBatch(ctx, e.tx, b, []*state{s}, []int{0})
}

// queue adds the saga's row, history and commands to b. The row's
// statement comes first.
func (e *txEnv[D]) queue(ctx context.Context, b *pgx.Batch, w *outbox.Writer, s *state, data *D, insert bool, causation string) error {
	id := [16]byte(s.ID)
	if insert {
		js, failure, err := rowJSON(s, data)
		if err != nil {
			return err
		}
		tp, ts := tracing.FromContext(ctx) // a timer much later still joins the saga's trace
		b.Queue(insertSagaSQL, id, s.Type, s.DefVersion, string(s.Status), s.Step, s.Attempt, s.Compensation,
			js, nullTime(s.Deadline), nullTime(s.NextRetryAt), nullTime(s.StepStartedAt), s.StepName, s.LastError,
			s.CorrelationID, s.Status.Finished(), failure, tp, ts)
	} else if err := queueUpdate(b, s, data); err != nil {
		return err
	}
	for _, h := range e.hist {
		if h.ended {
			b.Queue(insertStepSQL, id, h.step, h.compensation, h.attempt, h.name, h.startedAt, h.endedAt, string(h.outcome), h.errText)
		}
	}
	if len(e.finishes) > 0 {
		b.Queue(notifyFinishedSQL, []string{s.ID.String()})
	}
	return w.Write(ctx, batchExecer{b}, e.messages(s, causation)...)
}

// notifyFinishedSQL announces on FinishedChannel, when the transaction
// commits, the IDs of the sagas it finished (see Waiter). Only terminal
// transitions notify: one notification per saga.
const notifyFinishedSQL = `SELECT pg_notify('` + FinishedChannel + `', id) FROM unnest($1::text[]) id`

// messages are the outbox messages of the commands e sent for s.
func (e *txEnv[D]) messages(s *state, causation string) []outbox.Message {
	msgs := make([]outbox.Message, len(e.cmds))
	for i, c := range e.cmds {
		msgs[i] = commandMessage(c.Topic, &e.cmds[i].Envelope)
		msgs[i].CorrelationID, msgs[i].CausationID, msgs[i].SpanContext = s.CorrelationID, causation, c.trace
	}
	return msgs
}

// savedSaga is one saga of a batch for saveMany.
type savedSaga[D any] struct {
	env       *txEnv[D]
	state     *state
	data      *D
	causation string
}

// queueMany queues, in one batch, the new state of several sagas loaded
// (and locked) in the transaction, with their history and commands: an
// UPDATE per saga (by primary key and version), one multi-row history
// insert, one outbox write. The updates stay one per saga: a multi-row
// UPDATE ... FROM unnest(...) is a join, and the generic plan Postgres
// settles on for it while the table is small is a hash join over every
// saga. read reads the batch's results, failing with ErrConcurrentUpdate
// if any row's version moved; after a commit, bump the states' versions.
func queueMany[D any](ctx context.Context, w *outbox.Writer, sagas []savedSaga[D]) (b *pgx.Batch, read func(pgx.BatchResults) error, err error) {
	b = &pgx.Batch{}
	var (
		msgs     []outbox.Message
		hist     stepRows
		finished []string
	)
	for _, sv := range sagas {
		s := sv.state
		if err := queueUpdate(b, s, sv.data); err != nil {
			return nil, nil, err
		}
		for _, h := range sv.env.hist {
			if h.ended {
				hist.add(s.ID, h)
			}
		}
		msgs = append(msgs, sv.env.messages(s, sv.causation)...)
		if len(sv.env.finishes) > 0 {
			finished = append(finished, s.ID.String())
		}
	}
	if len(hist.ids) > 0 {
		b.Queue(insertStepsSQL, hist.ids, hist.steps, hist.comps, hist.attempts, hist.names, hist.started,
			hist.ended, hist.outcomes, hist.errs)
	}
	if len(finished) > 0 {
		b.Queue(notifyFinishedSQL, finished)
	}
	if err := w.Write(ctx, batchExecer{b}, msgs...); err != nil {
		return nil, nil, err
	}
	n := b.Len()
	read = func(br pgx.BatchResults) error {
		for i := range n {
			tag, err := br.Exec()
			if err != nil {
				return fmt.Errorf("saga: save: %w", err)
			}
			if i < len(sagas) && tag.RowsAffected() != 1 {
				return fmt.Errorf("%w: saga %s version %d", ErrConcurrentUpdate, sagas[i].state.ID, sagas[i].state.Version)
			}
		}
		return nil
	}
	return b, read, nil
}

// rowJSON is the saga row's JSON columns: its data, and its failure (nil
// for NULL).
func rowJSON[D any](s *state, data *D) (js []byte, failure any, err error) {
	if js, err = json.Marshal(data); err != nil {
		return nil, nil, fmt.Errorf("saga: marshal data: %w", err)
	}
	failure, err = encodeFailure(s.Failure)
	return js, failure, err
}

// queueUpdate queues the update of a saga's row.
func queueUpdate[D any](b *pgx.Batch, s *state, data *D) error {
	js, failure, err := rowJSON(s, data)
	if err != nil {
		return err
	}
	b.Queue(updateSagaSQL, [16]byte(s.ID), s.Version, string(s.Status), s.Step, s.Attempt, s.Compensation,
		js, nullTime(s.Deadline), nullTime(s.NextRetryAt), nullTime(s.StepStartedAt), s.StepName, s.LastError,
		s.Status.Finished(), failure)
	return nil
}

// stepRows are saga_steps rows as the arrays of insertStepsSQL.
type stepRows struct {
	ids             []([16]byte)
	steps, attempts []int32
	comps           []bool
	names           []string
	started, ended  []time.Time
	outcomes, errs  []string
}

func (r *stepRows) add(id uuid.UUID, h *histOp) {
	r.ids = append(r.ids, [16]byte(id))
	r.steps, r.attempts = append(r.steps, int32(h.step)), append(r.attempts, int32(h.attempt))
	r.comps, r.names = append(r.comps, h.compensation), append(r.names, h.name)
	r.started, r.ended = append(r.started, h.startedAt), append(r.ended, h.endedAt)
	r.outcomes, r.errs = append(r.outcomes, string(h.outcome)), append(r.errs, h.errText)
}

// sendBatch sends b and checks that the statement at rowStmts[i] (a saga's
// row) changed exactly one row; then it bumps the states' versions.
func sendBatch(ctx context.Context, tx pgx.Tx, b *pgx.Batch, states []*state, rowStmts []int) error {
	br := tx.SendBatch(ctx, b)
	next := 0
	for i := 0; i < b.Len(); i++ {
		tag, err := br.Exec()
		if err != nil {
			_ = br.Close()
			return fmt.Errorf("saga: save: %w", err)
		}
		if next < len(rowStmts) && i == rowStmts[next] {
			if tag.RowsAffected() != 1 {
				_ = br.Close()
				return fmt.Errorf("%w: saga %s version %d", ErrConcurrentUpdate, states[next].ID, states[next].Version)
			}
			next++
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("saga: save: %w", err)
	}
	for _, s := range states {
		s.Version++
	}
	return nil
}

// loadManySQL locks and reads the rows of several sagas, one primary-key
// lookup per id (LATERAL), in the order of $1 (sortedKeys). Not id = ANY($1): the
// statement is prepared, and the generic plan Postgres may settle on while
// the table is small (a new deployment) was a sequential scan, kept as the
// table grew, until an ANALYZE.
const loadManySQL = `
SELECT s.* FROM unnest($1::uuid[]) WITH ORDINALITY AS k(id, ord)
CROSS JOIN LATERAL (SELECT ` + stateColumns + ` FROM sagabox.sagas WHERE id = k.id AND saga_type = $2 FOR UPDATE) AS s
ORDER BY k.ord`

// scanStates reads loadManySQL's rows.
func scanStates(rows pgx.Rows) (map[uuid.UUID]*state, map[uuid.UUID][]byte, error) {
	defer rows.Close()
	states, datas := map[uuid.UUID]*state{}, map[uuid.UUID][]byte{}
	for rows.Next() {
		s := &state{}
		var data []byte
		if err := scanState(rows, s, &data); err != nil {
			return nil, nil, fmt.Errorf("saga: load: %w", err)
		}
		states[s.ID], datas[s.ID] = s, data
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("saga: load: %w", err)
	}
	return states, datas, nil
}

// sortedKeys are ids, deduplicated, in the order loadManySQL locks them:
// two batches lock their sagas in the same order and cannot deadlock.
func sortedKeys(ids []uuid.UUID) [][16]byte {
	keys := make([][16]byte, len(ids))
	for i, id := range ids {
		keys[i] = id
	}
	slices.SortFunc(keys, func(a, b [16]byte) int { return bytes.Compare(a[:], b[:]) })
	return slices.Compact(keys)
}

// loadForUpdate locks a saga's row for the rest of tx.
func loadForUpdate(ctx context.Context, tx pgx.Tx, typ string, id uuid.UUID) (*state, []byte, error) {
	s := &state{}
	var data []byte
	err := scanState(tx.QueryRow(ctx, `SELECT `+stateColumns+` FROM sagabox.sagas WHERE id = $1 AND saga_type = $2 FOR UPDATE`, [16]byte(id), typ), s, &data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("%w: %s saga %s", ErrNotFound, typ, id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("saga: load %s: %w", id, err)
	}
	return s, data, nil
}

// loadDueSQL locks the saga of a type whose timer of one kind came first,
// skipping sagas another instance (or a reply) is working on. One query per
// kind (deadline, next retry), each walking its partial index in order and
// stopping at the first saga. loadDue has them planned for their values
// each time (pgx.QueryExecModeExec: a poll is rare, planning it is cheap):
// the generic plan Postgres settled on for the prepared statement while
// the table was empty was a sequential scan, kept as the table grew, of
// every saga, finished ones included, twice a second per poll worker.
const loadDueSQL = `SELECT ` + stateColumns + `, admin_request, coalesce(traceparent, ''), coalesce(tracestate, '') FROM sagabox.sagas
WHERE %[1]s <= $2 AND saga_type = $1 AND definition_version = ANY($3::int4[])
ORDER BY %[1]s LIMIT 1 FOR UPDATE SKIP LOCKED`

var (
	loadDeadlineSQL = fmt.Sprintf(loadDueSQL, "deadline")
	loadRetrySQL    = fmt.Sprintf(loadDueSQL, "next_retry_at")
)

// loadDue locks one saga of typ, of one of versions, whose deadline or
// retry time has come, or returns nil. req is the saga's pending operator
// request (nil if none). Sagas of other versions are left to an
// orchestrator that has theirs.
//
// It also returns which timer it was ("deadline" or "retry") and the
// trace context stored with the saga at its start (migration 007).
func loadDue(ctx context.Context, tx pgx.Tx, typ string, versions []int, now time.Time) (s *state, data []byte, req []byte,
	due dueTimer, err error) {
	for i, sql := range []string{loadDeadlineSQL, loadRetrySQL} {
		s = &state{}
		var tp, ts string
		err := scanState(tx.QueryRow(ctx, sql, pgx.QueryExecModeExec, typ, now, versions), s, &data, &req, &tp, &ts)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, nil, nil, due, fmt.Errorf("saga: poll: %w", err)
		}
		due = dueTimer{kind: "deadline", trace: tracing.Parse(tp, ts)}
		if i == 1 {
			due.kind = "retry"
		}
		return s, data, req, due, nil
	}
	return nil, nil, nil, due, nil
}

// dueTimer is what loadDue found due, and the saga's trace context.
type dueTimer struct {
	kind  string
	trace trace.SpanContext
}
