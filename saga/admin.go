package saga

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// AdminDB is what an Admin works through: a *pgxpool.Pool, a *pgx.Conn or
// a pgx.Tx (Retry and Abort open a transaction, or a savepoint in a Tx).
type AdminDB interface {
	Querier
	Begin(ctx context.Context) (pgx.Tx, error)
}

// AnyDefinition is a *Definition[D] of any D, for NewAdmin.
type AnyDefinition interface {
	Name() string
	Version() int
	Describe() DefinitionInfo
	stepKinds() []stepKind
}

// Admin is the operator API over one database's sagas: get, list, count,
// retry, abort and clean up by saga ID, without the definitions' Go types,
// from any process (a console, the sagabox CLI). It holds no state but its
// arguments: make one where you need it.
//
// Retry and Abort do not run the saga's steps (that takes the definition's
// Go type): they check the saga's state and record the request in its row,
// in one transaction, and make the saga due. A running Orchestrator of the
// saga's type carries the request out at its next timer poll (within
// Config.PollInterval), with its machine, and records it in the saga's
// history (Info.Actions); a request made while no orchestrator runs waits
// for one. Orchestrator.Retry and Orchestrator.Abort are the immediate,
// typed forms; both paths check the same things.
type Admin struct {
	db    AdminDB
	infos map[string]map[int]DefinitionInfo
}

// NewAdmin returns an Admin over db. defs are optional: without a saga's
// definition (type and version) the Admin uses the one its orchestrator
// recorded in the database when it started (Admin.Definition). With a
// definition, Abort refuses at once a saga past its pivot; without any,
// the orchestrator refuses it when it carries the request out, and records
// the refusal in the saga's Actions.
func NewAdmin(db AdminDB, defs ...AnyDefinition) *Admin {
	a := &Admin{db: db, infos: map[string]map[int]DefinitionInfo{}}
	for _, d := range defs {
		if a.infos[d.Name()] == nil {
			a.infos[d.Name()] = map[int]DefinitionInfo{}
		}
		a.infos[d.Name()][d.Version()] = d.Describe()
	}
	return a
}

// ActionKind is what an operator asked for.
type ActionKind string

const (
	// ActionRetry: restart a failed saga where it failed (Admin.Retry).
	ActionRetry ActionKind = "retry"
	// ActionAbort: compensate a running saga (Admin.Abort).
	ActionAbort ActionKind = "abort"
	// ActionOutboxRetry and ActionOutboxDiscard: an operator put back in
	// line, or deleted, a parked outbox message of the saga (a command it
	// sent, a reply to it); recorded with Admin.Record.
	ActionOutboxRetry   ActionKind = "outbox_retry"
	ActionOutboxDiscard ActionKind = "outbox_discard"
)

// ActionResult is where an operator's action stands.
type ActionResult string

const (
	// ResultRequested: the Admin recorded the request; an orchestrator
	// has not carried it out yet.
	ResultRequested ActionResult = "requested"
	// ResultDone: the orchestrator carried it out.
	ResultDone ActionResult = "done"
	// ResultRefused: when the orchestrator came to it, the saga's state
	// no longer allowed it (Error says why); nothing changed.
	ResultRefused ActionResult = "refused"
)

// Action is one entry of a saga's operator history.
type Action struct {
	Action ActionKind   `json:"action"`
	Result ActionResult `json:"result"`
	Actor  string       `json:"actor,omitempty"`
	Reason string       `json:"reason,omitempty"`
	Error  string       `json:"error,omitempty"`
	At     time.Time    `json:"at"`
}

// ActionOptions are optional details of an operator action.
type ActionOptions struct {
	// Actor says who asked (an operator's name, "cli"), for the history.
	Actor string
	// Reason says why (Abort takes it as an argument).
	Reason string
}

// Get returns a saga with its step history and operator actions, or
// ErrNotFound.
func (a *Admin) Get(ctx context.Context, id uuid.UUID) (*Info, error) {
	return get(ctx, a.db, id)
}

// ListOptions select sagas for Admin.List. Every condition set must hold.
type ListOptions struct {
	// Status, when not empty, lists only sagas in one of these states.
	Status []Status
	// Type, when set, lists only sagas of that definition.
	Type string
	// Failed lists only failed sagas (the same as Status: failed).
	Failed bool
	// PastDeadline lists only unfinished sagas whose deadline or retry
	// time has passed: a saga that stays in this list longer than a poll
	// interval has no orchestrator firing its timers.
	PastDeadline bool
	// StuckFor lists only unfinished sagas whose state has not changed for
	// at least this long (0: no such condition).
	StuckFor time.Duration
	// Limit is the page size; 0 means DefaultListLimit.
	Limit int
	// After is the cursor of the page to list (Page.Next of the previous
	// page); empty for the first page.
	After string
}

// DefaultListLimit is the page size of Admin.List.
const DefaultListLimit = 100

// Page is one page of Admin.List, newest saga first.
type Page struct {
	// Sagas, without their history.
	Sagas []Info
	// Next is the cursor of the next page (ListOptions.After); empty on
	// the last page.
	Next string
}

// List returns a page of sagas, newest first (by creation time, then ID),
// without their history. Pages are keyset-paged: sagas started while an
// operator pages through do not shift later pages (no saga is listed
// twice). It does not use an index of its own (the console adds nothing to
// the hot paths): it reads the sagas table, which Cleanup keeps small.
func (a *Admin) List(ctx context.Context, opt ListOptions) (Page, error) {
	if opt.Limit < 0 || opt.StuckFor < 0 {
		return Page{}, fmt.Errorf("%w: ListOptions: negative Limit or StuckFor", ErrInvalidConfig)
	}
	if opt.Limit == 0 {
		opt.Limit = DefaultListLimit
	}
	var statuses []string
	for _, s := range opt.Status {
		statuses = append(statuses, string(s))
	}
	var stuck, afterAt any
	var afterID any
	if opt.StuckFor > 0 {
		stuck = time.Now().Add(-opt.StuckFor)
	}
	if opt.After != "" {
		at, id, err := decodeCursor(opt.After)
		if err != nil {
			return Page{}, err
		}
		afterAt, afterID = at, [16]byte(id)
	}
	rows, err := a.db.Query(ctx, `SELECT `+infoColumns+` FROM sagabox.sagas
WHERE ($1::text[] IS NULL OR status = ANY($1))
  AND ($2 = '' OR saga_type = $2)
  AND (NOT $3 OR status = 'failed')
  AND (NOT $4 OR (finished_at IS NULL AND (deadline <= now() OR next_retry_at <= now())))
  AND ($5::timestamptz IS NULL OR (finished_at IS NULL AND updated_at <= $5))
  AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
ORDER BY created_at DESC, id DESC LIMIT $8`,
		statuses, opt.Type, opt.Failed, opt.PastDeadline, stuck, afterAt, afterID, opt.Limit+1)
	if err != nil {
		return Page{}, fmt.Errorf("saga: list: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Info, error) { return scanInfo(r) })
	if err != nil {
		return Page{}, fmt.Errorf("saga: list: %w", err)
	}
	p := Page{Sagas: list}
	if len(list) > opt.Limit {
		p.Sagas = list[:opt.Limit]
		last := p.Sagas[opt.Limit-1]
		p.Next = encodeCursor(last.CreatedAt, last.ID)
	}
	return p, nil
}

func encodeCursor(at time.Time, id uuid.UUID) string {
	b := binary.BigEndian.AppendUint64(nil, uint64(at.UnixMicro()))
	return base64.RawURLEncoding.EncodeToString(append(b, id[:]...))
}

func decodeCursor(c string) (time.Time, uuid.UUID, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) != 24 {
		return time.Time{}, uuid.Nil, fmt.Errorf("%w: %q", ErrInvalidCursor, c)
	}
	return time.UnixMicro(int64(binary.BigEndian.Uint64(b))), uuid.UUID(b[8:]), nil
}

// Counts returns how many sagas are in each state; every Status is present,
// at 0 if none.
func (a *Admin) Counts(ctx context.Context) (map[Status]int64, error) {
	counts := map[Status]int64{StatusRunning: 0, StatusCompensating: 0, StatusSucceeded: 0, StatusCompensated: 0, StatusFailed: 0}
	rows, err := a.db.Query(ctx, `SELECT status, count(*) FROM sagabox.sagas GROUP BY status`)
	if err != nil {
		return nil, fmt.Errorf("saga: counts: %w", err)
	}
	var st string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&st, &n}, func() error { counts[Status(st)] = n; return nil })
	if err != nil {
		return nil, fmt.Errorf("saga: counts: %w", err)
	}
	return counts, nil
}

// Retry asks for a failed saga to be restarted where it failed (the
// compensation, or the step past the pivot) with fresh attempts. It returns
// ErrNotFound, or ErrWrongState (the saga has not failed, or a request is
// already pending) and changes nothing. See Admin for how the request is
// carried out.
func (a *Admin) Retry(ctx context.Context, id uuid.UUID, opt ...ActionOptions) error {
	var o ActionOptions
	if len(opt) > 0 {
		o = opt[0]
	}
	return a.request(ctx, id, Action{Action: ActionRetry, Actor: o.Actor, Reason: o.Reason}, func(s *state) error { return checkRetry(s) })
}

// Abort asks for a running saga that has not passed its pivot to be
// compensated, including the step in flight (or backing off between
// attempts). A saga waiting on its pivot can be aborted: the steps before
// it are compensated, and if the pivot's participant then answers that it
// did it, the late reply is recorded (Info.LateReplies) and counted
// (sagabox_saga_late_replies_total{disposition="recorded"}) for an operator
// to reverse, since a pivot has no compensation. It returns ErrNotFound, or
// ErrWrongState (the saga is not running, is past its pivot, or a request
// is already pending) and changes nothing. See Admin for how the request
// is carried out.
func (a *Admin) Abort(ctx context.Context, id uuid.UUID, reason string, opt ...ActionOptions) error {
	var o ActionOptions
	if len(opt) > 0 {
		o = opt[0]
	}
	return a.requestTx(ctx, id, Action{Action: ActionAbort, Actor: o.Actor, Reason: reason}, func(tx pgx.Tx, s *state) error {
		d, ok := a.infos[s.Type][s.DefVersion]
		if !ok {
			if rec, err := loadDefinition(ctx, tx, s.Type, s.DefVersion); err == nil {
				d, ok = *rec, true
			} else if !errors.Is(err, ErrNotFound) {
				return err
			}
		}
		var kinds []stepKind
		if ok {
			kinds = d.stepKinds()
		}
		return checkAbort(s, kinds)
	})
}

func (a *Admin) request(ctx context.Context, id uuid.UUID, act Action, check func(*state) error) error {
	return a.requestTx(ctx, id, act, func(_ pgx.Tx, s *state) error { return check(s) })
}

func (a *Admin) requestTx(ctx context.Context, id uuid.UUID, act Action, check func(pgx.Tx, *state) error) error {
	act.Result, act.At = ResultRequested, time.Now().UTC()
	return pgx.BeginFunc(ctx, a.db, func(tx pgx.Tx) error {
		s := &state{}
		var data, pending []byte
		err := scanState(tx.QueryRow(ctx, `SELECT `+stateColumns+`, admin_request FROM sagabox.sagas WHERE id = $1 FOR UPDATE`, [16]byte(id)),
			s, &data, &pending)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if err != nil {
			return fmt.Errorf("saga: load %s: %w", id, err)
		}
		if pending != nil {
			var p Action
			_ = json.Unmarshal(pending, &p)
			return fmt.Errorf("%w: saga %s already has a request (%s) waiting for its orchestrator", ErrWrongState, id, p.Action)
		}
		if err := check(tx, s); err != nil {
			return err
		}
		req, err := json.Marshal(act)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE sagabox.sagas SET admin_request = $2::jsonb,
	admin_log = coalesce(admin_log, '[]'::jsonb) || jsonb_build_array($2::jsonb), next_retry_at = now()
WHERE id = $1`, [16]byte(id), string(req))
		if err != nil {
			return fmt.Errorf("saga: %s %s: %w", act.Action, id, err)
		}
		return nil
	})
}

// Record adds what an operator did elsewhere to the saga's history (its
// Actions, result done), changing nothing else: for actions on the saga's
// outbox messages, say. It returns ErrNotFound for an unknown saga.
func (a *Admin) Record(ctx context.Context, id uuid.UUID, kind ActionKind, opt ActionOptions) error {
	entry, err := json.Marshal(Action{Action: kind, Result: ResultDone, Actor: opt.Actor, Reason: opt.Reason, At: time.Now().UTC()})
	if err != nil {
		return err
	}
	tag, err := a.db.Exec(ctx, `UPDATE sagabox.sagas SET admin_log = coalesce(admin_log, '[]'::jsonb) || jsonb_build_array($2::jsonb) WHERE id = $1`,
		[16]byte(id), string(entry))
	if err != nil {
		return fmt.Errorf("saga %s: record %s: %w", id, kind, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return nil
}

// Cleanup deletes, in batches of DefaultCleanupBatch, the sagas that
// succeeded or were compensated more than retention ago (with their
// history) and the inbox entries older than retention. Failed sagas stay
// until an operator retries them. Orchestrator.Run and Participant.Run
// call it every CleanupInterval. It returns how many rows it deleted.
func (a *Admin) Cleanup(ctx context.Context, retention time.Duration) (int64, error) {
	return cleanup(ctx, a.db, retention)
}

// carryOut performs an operator's request (Admin.Retry, Admin.Abort) on a
// saga the timer poll loaded: it clears the request, records the result in
// the saga's actions and runs the machine. A request the saga's state no
// longer allows is refused (recorded, nothing else changes).
func (o *Orchestrator[D]) carryOut(ctx context.Context, e *txEnv[D], m *machine[D], s *state, data *D, raw []byte) error {
	var req Action
	if err := json.Unmarshal(raw, &req); err != nil {
		return fmt.Errorf("saga %s: operator request: %w", s.ID, err)
	}
	reason := req.Reason
	if req.Actor != "" {
		reason = fmt.Sprintf("%s (by %s)", reason, req.Actor)
	}
	var err error
	switch req.Action {
	case ActionRetry:
		err = m.retry(ctx, e, s, data)
	case ActionAbort:
		err = m.abort(ctx, e, s, data, reason)
	default:
		err = fmt.Errorf("%w: unknown operator request %q", ErrWrongState, req.Action)
	}
	done := Action{Action: req.Action, Result: ResultDone, Actor: req.Actor, Reason: req.Reason, At: e.now().UTC()}
	switch {
	case errors.Is(err, ErrWrongState):
		done.Result, done.Error = ResultRefused, err.Error()
		// Nothing changed; the saga was due only for the request, unless
		// it is backing off (then its retry comes now, not later).
		if s.awaiting() || s.Status.Finished() {
			s.NextRetryAt = time.Time{}
		}
	case err != nil:
		return err
	}
	// Before the row's update, which keeps the saga due while a request
	// is pending.
	if err := logAction(ctx, e.tx, s.ID, done, true); err != nil {
		return err
	}
	o.log.InfoContext(ctx, "saga: operator request", "saga_id", s.ID, "action", req.Action, "result", done.Result,
		"actor", req.Actor, "reason", req.Reason, "error", done.Error)
	return nil
}

// logAction appends act to the saga's actions, clearing its pending
// request if clear.
func logAction(ctx context.Context, tx pgx.Tx, id uuid.UUID, act Action, clear bool) error {
	entry, err := json.Marshal(act)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE sagabox.sagas SET admin_request = CASE WHEN $3 THEN NULL ELSE admin_request END,
	admin_log = coalesce(admin_log, '[]'::jsonb) || jsonb_build_array($2::jsonb) WHERE id = $1`, [16]byte(id), string(entry), clear)
	if err != nil {
		return fmt.Errorf("saga %s: record %s: %w", id, act.Action, err)
	}
	return nil
}
