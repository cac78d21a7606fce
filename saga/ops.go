package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Info is what an operator sees of a saga.
type Info struct {
	ID                uuid.UUID
	Type              string
	DefinitionVersion int
	Status            Status
	// Step is the index of the current step (being run, compensated, or
	// where the saga stopped).
	Step int
	// Step is len(steps) once succeeded and -1 once compensated.
	// StepName names the step of the last attempt sent to a participant
	// (local steps do not set it): use CurrentStep for the step's name.
	StepName string
	Attempt  int
	// Compensation is true once the saga started compensating.
	Compensation bool
	// Version grows with every state change.
	Version     int64
	Deadline    *time.Time // awaiting a reply until then
	NextRetryAt *time.Time // backing off until then
	LastError   string
	// Failure is what made the saga compensate (see FailureFrom); nil if
	// it has not compensated.
	Failure       *Failure
	CorrelationID string
	CreatedAt     time.Time
	UpdatedAt     time.Time
	FinishedAt    *time.Time
	// Data is the saga's data as stored (JSON).
	Data json.RawMessage
	// History has one entry per attempt of a step or compensation, in
	// order. Only Get fills it.
	History []Attempt
	// Actions are what operators did to the saga, oldest first (see
	// Admin); Request is the request waiting for an orchestrator, if any.
	// Only Get fills them.
	Actions []Action
	Request *Action
	// LateReplies are the replies that came after the saga stopped
	// waiting for them and told it something new, oldest first, with what
	// was done about them (see LateReply). Only Get fills them.
	LateReplies []LateReply
}

// Attempt is one attempt of a step or of its compensation.
type Attempt struct {
	Step         int
	Name         string
	Compensation bool
	Attempt      int
	StartedAt    time.Time
	FinishedAt   *time.Time
	// Outcome is how the attempt ended; empty while in flight.
	Outcome Outcome
	Error   string
}

const infoColumns = `id, saga_type, definition_version, status, step, step_name, attempt, compensation, version,
	deadline, next_retry_at, last_error, failure, correlation_id, created_at, updated_at, finished_at, data`

// scanInfo scans infoColumns, then extra.
func scanInfo(row pgx.Row, extra ...any) (Info, error) {
	var i Info
	var status string
	var failure []byte
	err := row.Scan(append([]any{&i.ID, &i.Type, &i.DefinitionVersion, &status, &i.Step, &i.StepName, &i.Attempt, &i.Compensation, &i.Version,
		&i.Deadline, &i.NextRetryAt, &i.LastError, &failure, &i.CorrelationID, &i.CreatedAt, &i.UpdatedAt, &i.FinishedAt, &i.Data}, extra...)...)
	i.Status = Status(status)
	if err == nil {
		i.Failure, err = decodeFailure(failure)
	}
	return i, err
}

// get is Admin.Get.
func get(ctx context.Context, db Querier, id uuid.UUID) (*Info, error) {
	var inFlight Attempt
	var stepStarted *time.Time
	var request, log []byte
	i, err := scanInfo(db.QueryRow(ctx, `SELECT `+infoColumns+`, step_started_at, admin_request, admin_log FROM sagabox.sagas WHERE id = $1`, [16]byte(id)),
		&stepStarted, &request, &log)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("saga: get %s: %w", id, err)
	}
	if request != nil {
		i.Request = &Action{}
		if err := json.Unmarshal(request, i.Request); err != nil {
			return nil, fmt.Errorf("saga: get %s: request: %w", id, err)
		}
	}
	if log != nil {
		if err := json.Unmarshal(log, &i.Actions); err != nil {
			return nil, fmt.Errorf("saga: get %s: actions: %w", id, err)
		}
	}
	rows, err := db.Query(ctx, `SELECT step, name, compensation, attempt, started_at, finished_at, coalesce(outcome, ''), error
FROM sagabox.saga_steps WHERE saga_id = $1 ORDER BY started_at, compensation, step, attempt`, id)
	if err != nil {
		return nil, fmt.Errorf("saga: history of %s: %w", id, err)
	}
	i.History, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Attempt, error) {
		var a Attempt
		err := r.Scan(&a.Step, &a.Name, &a.Compensation, &a.Attempt, &a.StartedAt, &a.FinishedAt, &a.Outcome, &a.Error)
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("saga: history of %s: %w", id, err)
	}
	rows, err = db.Query(ctx, `SELECT step, name, compensation, attempt, outcome, reason, disposition, note, received_at
FROM sagabox.saga_late_replies WHERE saga_id = $1 ORDER BY n`, id)
	if err != nil {
		return nil, fmt.Errorf("saga: late replies of %s: %w", id, err)
	}
	i.LateReplies, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (LateReply, error) {
		var l LateReply
		err := r.Scan(&l.Step, &l.Name, &l.Compensation, &l.Attempt, &l.Outcome, &l.Reason, &l.Disposition, &l.Note, &l.ReceivedAt)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("saga: late replies of %s: %w", id, err)
	}
	// The attempt awaiting its reply has no history row yet (it gets one
	// when it ends): it is described by the saga's row.
	if i.Deadline != nil && stepStarted != nil {
		inFlight.Step, inFlight.Name, inFlight.Compensation, inFlight.Attempt, inFlight.StartedAt = i.Step, i.StepName, i.Compensation, i.Attempt, *stepStarted
		if !slices.ContainsFunc(i.History, func(a Attempt) bool {
			return a.Step == inFlight.Step && a.Compensation == inFlight.Compensation && a.Attempt == inFlight.Attempt
		}) {
			i.History = append(i.History, inFlight)
		}
	}
	return &i, nil
}

// cleanup is Admin.Cleanup.
func cleanup(ctx context.Context, db Querier, retention time.Duration) (int64, error) {
	before := time.Now().Add(-retention)
	var total int64
	for _, q := range []string{
		`DELETE FROM sagabox.sagas WHERE id IN (SELECT id FROM sagabox.sagas
			WHERE finished_at < $1 AND status <> 'failed' ORDER BY finished_at LIMIT $2)`,
		`DELETE FROM sagabox.saga_inbox WHERE ctid IN (SELECT ctid FROM sagabox.saga_inbox
			WHERE processed_at < $1 ORDER BY processed_at LIMIT $2)`,
	} {
		for {
			tag, err := db.Exec(ctx, q, before, DefaultCleanupBatch)
			if err != nil {
				return total, fmt.Errorf("saga: cleanup: %w", err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < DefaultCleanupBatch {
				break
			}
		}
	}
	return total, nil
}
