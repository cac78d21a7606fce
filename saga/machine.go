package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/trace"
	"time"

	"github.com/google/uuid"
)

// Status of a saga.
type Status string

const (
	// StatusRunning: going forward through the steps.
	StatusRunning Status = "running"
	// StatusCompensating: a step failed; undoing the completed steps in
	// reverse order.
	StatusCompensating Status = "compensating"
	// StatusSucceeded: every step succeeded.
	StatusSucceeded Status = "succeeded"
	// StatusCompensated: a step failed and every completed step was undone.
	StatusCompensated Status = "compensated"
	// StatusFailed: a compensation (or the pivot, or a step past it) kept
	// failing after its retries, or a pivot or retriable step stayed
	// unanswered past its UnknownOutcomeBudget. The saga is stuck half done
	// and needs an operator (Admin.Retry, Orchestrator.Retry); it is never
	// reported as compensated. A definitive late reply to the step it
	// failed on still moves it on.
	StatusFailed Status = "failed"
)

// Finished reports whether the status is final.
func (s Status) Finished() bool {
	return s == StatusSucceeded || s == StatusCompensated || s == StatusFailed
}

// state is a saga's row, without its data.
type state struct {
	ID            uuid.UUID
	Type          string
	DefVersion    int
	Status        Status
	Step          int
	Attempt       int
	Compensation  bool // in the compensation phase (also when failed there)
	Deadline      time.Time
	NextRetryAt   time.Time
	StepStartedAt time.Time
	// StepName names the attempt in flight (the history gets its row when
	// it ends).
	StepName      string
	LastError     string
	Version       int64
	CorrelationID string
	// Failure made the saga compensate; nil before that.
	Failure *Failure
}

func (s *state) awaiting() bool { return !s.Deadline.IsZero() }

// outCommand is a command the machine wants sent.
type outCommand struct {
	Topic    string
	Envelope commandEnvelope
	// trace is the span context of the work that sent the command (the
	// HTTP request that started the saga, the reply or the timer): the
	// command carries it, even when a batch writes several sagas' commands
	// at once.
	trace trace.SpanContext
}

// Outcome is how an attempt of a step or compensation ended (Attempt,
// Failure), and what a participant's reply says (Reply: succeeded, rejected
// or error).
type Outcome string

const (
	// OutcomeSucceeded: the step (or the participant) did it.
	OutcomeSucceeded Outcome = "succeeded"
	// OutcomeRejected: a business "no" that will not change (out of stock,
	// not enough credit): not retried, the saga compensates.
	OutcomeRejected Outcome = "rejected"
	// OutcomeError: something transient failed and nothing was done; the
	// step is retried after a backoff.
	OutcomeError Outcome = "error"
	// OutcomeTimedOut: no reply before the step's deadline.
	OutcomeTimedOut Outcome = "timed_out"
	// OutcomeAborted: an operator aborted the saga during the attempt.
	OutcomeAborted Outcome = "aborted"
)

// env is what the machine does I/O through: the orchestrator's transaction,
// or sagatest's memory.
type env[D any] interface {
	now() time.Time
	// runLocal runs fn so that its effects vanish if it fails.
	runLocal(ctx context.Context, fn LocalFunc[D], data *D) error
	send(cmd outCommand)
	attemptStarted(step int, compensation bool, attempt int, name string, at time.Time)
	attemptEnded(step int, compensation bool, attempt int, name string, outcome Outcome, errText string, at time.Time, latency time.Duration)
	finished(s *state)
	// knownOutcome reports whether the saga's history has a definitive
	// (succeeded or rejected) attempt of the step in that phase. Only the
	// late-reply path asks.
	knownOutcome(ctx context.Context, s *state, step int, compensation bool) (bool, error)
	// late records a reply the saga did not wait for (see LateReply), and
	// sends cmd (a compensation) if not nil.
	late(ctx context.Context, s *state, l LateReply, cmd *outCommand) error
	// askAgain says that a step whose outcome is unknown is asked again.
	askAgain()
}

type machine[D any] struct {
	def        *Definition[D]
	replyTopic string
	encode     func(typ string, v any) ([]byte, error)
}

// advance runs local steps and sends the next command until the saga waits
// (for a reply or a retry) or finishes.
func (m *machine[D]) advance(ctx context.Context, e env[D], s *state, data *D) error {
	for {
		if !s.NextRetryAt.IsZero() {
			return nil // backing off: the poller resumes at NextRetryAt
		}
		switch s.Status {
		case StatusRunning:
			if s.Step >= len(m.def.steps) {
				m.finish(e, s, StatusSucceeded)
				return nil
			}
			st := &m.def.steps[s.Step]
			if st.Local != nil {
				if err := m.runLocal(ctx, e, s, st.Local, st.Name, data); err != nil {
					return err
				}
				continue
			}
			return m.invoke(ctx, e, s, st.Invoke, st.Name, st.Timeout, data)
		case StatusCompensating:
			for s.Step >= 0 && !m.def.steps[s.Step].hasCompensation() {
				s.Step--
				s.Attempt = 1
			}
			if s.Step < 0 {
				m.finish(e, s, StatusCompensated)
				return nil
			}
			st := &m.def.steps[s.Step]
			cctx := withFailure(ctx, s.Failure)
			if st.CompensateLocal != nil {
				if err := m.runLocal(cctx, e, s, st.CompensateLocal, st.Name, data); err != nil {
					return err
				}
				continue
			}
			return m.invoke(cctx, e, s, st.Compensate, st.Name, st.CompensationTimeout, data)
		default:
			return nil
		}
	}
}

func (m *machine[D]) finish(e env[D], s *state, st Status) {
	s.Status = st
	s.Deadline, s.NextRetryAt = time.Time{}, time.Time{}
	e.finished(s)
}

// runLocal runs a local step or compensation and moves the state on. Only an
// error of the environment (the database) is returned.
func (m *machine[D]) runLocal(ctx context.Context, e env[D], s *state, fn LocalFunc[D], name string, data *D) error {
	now := e.now()
	e.attemptStarted(s.Step, s.Compensation, s.Attempt, name, now)
	work, err := clone(data)
	if err != nil {
		return err
	}
	runErr := e.runLocal(ctx, fn, work)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	end := e.now()
	if runErr == nil {
		e.attemptEnded(s.Step, s.Compensation, s.Attempt, name, OutcomeSucceeded, "", end, end.Sub(now))
		*data = *work
		m.stepDone(s)
		return nil
	}
	outcome := OutcomeError
	if errors.Is(runErr, ErrRejected) {
		outcome = OutcomeRejected
	}
	e.attemptEnded(s.Step, s.Compensation, s.Attempt, name, outcome, runErr.Error(), end, end.Sub(now))
	// A failed local step was rolled back: it needs no compensation.
	reason := rejectionReason(runErr)
	m.failed(e, s, outcome == OutcomeRejected, true, reason, Failure{Outcome: outcome, Reason: reason})
	return nil
}

func (m *machine[D]) invoke(ctx context.Context, e env[D], s *state, inv *Invocation[D], name string, timeout time.Duration, data *D) error {
	env, err := m.command(ctx, s, s.Step, s.Attempt, s.Compensation, inv, name, data)
	if err != nil {
		return err
	}
	now := e.now()
	e.send(outCommand{Topic: inv.Topic, Envelope: env, trace: trace.SpanContextFromContext(ctx)})
	e.attemptStarted(s.Step, s.Compensation, s.Attempt, name, now)
	s.Deadline = now.Add(timeout)
	s.NextRetryAt = time.Time{}
	s.StepStartedAt, s.StepName = now, name
	return nil
}

// command builds the envelope of a step's (or compensation's) command.
func (m *machine[D]) command(ctx context.Context, s *state, step, attempt int, comp bool, inv *Invocation[D], name string, data *D) (commandEnvelope, error) {
	env := commandEnvelope{
		SagaID: s.ID.String(), SagaType: m.def.name, Step: step, StepName: name,
		Attempt: attempt, Compensation: comp, Command: inv.Command,
		ReplyTopic: m.replyTopic, PayloadType: inv.Type,
	}
	if inv.Payload != nil || inv.PayloadContext != nil {
		var v any
		var err error
		if inv.PayloadContext != nil {
			v, err = inv.PayloadContext(ctx, data)
		} else {
			v, err = inv.Payload(data)
		}
		if err != nil {
			return env, fmt.Errorf("saga %s: step %q: build %s payload: %w", m.def.name, name, inv.Command, err)
		}
		if env.Payload, err = m.encode(inv.Type, v); err != nil {
			return env, fmt.Errorf("saga %s: step %q: encode %s payload: %w", m.def.name, name, inv.Command, err)
		}
	}
	if env.Payload == nil {
		env.Payload = []byte{}
	}
	return env, nil
}

// stepDone moves to the next step (forward) or the previous one (back).
func (m *machine[D]) stepDone(s *state) {
	s.Deadline, s.NextRetryAt = time.Time{}, time.Time{}
	s.Attempt = 1
	if s.Status == StatusCompensating {
		s.Step--
	} else {
		s.Step++
	}
}

// failed handles a failed attempt. final: the participant (or local step)
// said no and retrying cannot help. clean: the step certainly had no effect
// (rejected, or a rolled back local step), so it needs no compensation.
// reason goes to LastError; f (its Outcome and Reason) is recorded as the
// saga's Failure if the saga starts compensating.
func (m *machine[D]) failed(e env[D], s *state, final, clean bool, reason string, f Failure) {
	st := &m.def.steps[s.Step]
	s.Deadline = time.Time{}
	s.LastError = fmt.Sprintf("step %s attempt %d: %s", st.Name, s.Attempt, reason)
	if s.Status == StatusCompensating {
		// A compensation must not give up lightly: a "no" is retried too.
		if s.Attempt < st.CompensationRetry.MaxAttempts {
			m.retryLater(e, s, st.CompensationRetry)
			return
		}
		m.finish(e, s, StatusFailed)
		return
	}
	if !final && s.Attempt < st.Retry.MaxAttempts {
		m.retryLater(e, s, st.Retry)
		return
	}
	if f.Outcome == OutcomeTimedOut && st.Kind != Compensatable {
		// The outcome is unknown, and the step cannot be undone: ask
		// again (the participant's inbox answers a command it ran with
		// the reply it stored) until a reply comes, an operator acts, or
		// the step's UnknownOutcomeBudget runs out.
		if st.keepAsking(s.Attempt) {
			s.LastError += " (outcome unknown: asking again until the participant answers or an operator acts)"
			e.askAgain()
			m.retryLater(e, s, st.Retry)
			return
		}
		s.LastError += fmt.Sprintf(" (outcome still unknown after the %s UnknownOutcomeBudget: not compensating; a late reply is still applied, Retry asks again)", st.UnknownOutcomeBudget)
		m.finish(e, s, StatusFailed)
		return
	}
	switch {
	case st.Kind == Retriable:
		m.finish(e, s, StatusFailed)
	case st.Kind == Pivot && !clean:
		s.LastError += " (the pivot's outcome is unknown: not compensating)"
		m.finish(e, s, StatusFailed)
	default:
		f.Step, f.StepName, f.Attempts = s.Step, st.Name, s.Attempt
		if f.Outcome == OutcomeTimedOut {
			f.Reason = timedOutReason(s.Attempt)
		}
		m.compensateFrom(s, clean, f)
	}
}

func timedOutReason(attempts int) string {
	if attempts == 1 {
		return "timed out after 1 attempt"
	}
	return fmt.Sprintf("timed out after %d attempts", attempts)
}

// compensateFrom starts compensating because of f.
func (m *machine[D]) compensateFrom(s *state, clean bool, f Failure) {
	s.Failure = &f
	s.Status = StatusCompensating
	s.Compensation = true
	s.Attempt = 1
	s.Deadline, s.NextRetryAt = time.Time{}, time.Time{}
	if clean {
		s.Step--
	}
}

func (m *machine[D]) retryLater(e env[D], s *state, p RetryPolicy) {
	s.Attempt++
	s.NextRetryAt = e.now().Add(p.backoff(s.Attempt))
}

// onReply applies a reply. It returns false when the reply is not the one the
// saga waits for (finished saga, other step or phase, old attempt, or a
// duplicate): such replies are ignored.
func (m *machine[D]) onReply(ctx context.Context, e env[D], s *state, data *D, r *Reply) (bool, error) {
	if s.Status.Finished() || !s.awaiting() || r.Step != s.Step || r.Attempt != s.Attempt ||
		r.Compensation != (s.Status == StatusCompensating) {
		return m.onLateReply(ctx, e, s, data, r)
	}
	st := &m.def.steps[s.Step]
	now := e.now()
	latency := now.Sub(s.StepStartedAt)
	switch r.Outcome {
	case OutcomeSucceeded:
		inv := st.Invoke
		if s.Status == StatusCompensating {
			inv = st.Compensate
		}
		if inv.OnReply != nil {
			work, err := clone(data)
			if err != nil {
				return false, err
			}
			if err := inv.OnReply(work, r); err != nil {
				// The participant did it, but the saga cannot use the
				// answer: fail the step, compensating it too.
				e.attemptEnded(s.Step, s.Compensation, s.Attempt, st.Name, OutcomeError, "OnReply: "+err.Error(), now, latency)
				m.failed(e, s, true, false, "OnReply: "+err.Error(), Failure{Outcome: OutcomeError, Reason: err.Error()})
				return true, m.advance(ctx, e, s, data)
			}
			*data = *work
		}
		e.attemptEnded(s.Step, s.Compensation, s.Attempt, st.Name, OutcomeSucceeded, "", now, latency)
		m.stepDone(s)
	case OutcomeRejected:
		e.attemptEnded(s.Step, s.Compensation, s.Attempt, st.Name, OutcomeRejected, r.Reason, now, latency)
		m.failed(e, s, true, true, "rejected: "+r.Reason, Failure{Outcome: OutcomeRejected, Reason: r.Reason})
	default:
		e.attemptEnded(s.Step, s.Compensation, s.Attempt, st.Name, OutcomeError, r.Reason, now, latency)
		m.failed(e, s, false, false, "error: "+r.Reason, Failure{Outcome: OutcomeError, Reason: r.Reason})
	}
	return true, m.advance(ctx, e, s, data)
}

// onDue handles an expired deadline (the attempt timed out) or a retry that
// is due. It returns false when nothing was due.
func (m *machine[D]) onDue(ctx context.Context, e env[D], s *state, data *D) (bool, error) {
	now := e.now()
	switch {
	case s.Status.Finished():
		return false, nil
	case s.awaiting() && !now.Before(s.Deadline):
		e.attemptEnded(s.Step, s.Compensation, s.Attempt, m.def.steps[s.Step].Name, OutcomeTimedOut, "no reply before the deadline", now, now.Sub(s.StepStartedAt))
		m.failed(e, s, false, false, "timed out", Failure{Outcome: OutcomeTimedOut})
		return true, m.advance(ctx, e, s, data)
	case !s.NextRetryAt.IsZero() && !now.Before(s.NextRetryAt):
		s.NextRetryAt = time.Time{}
		return true, m.advance(ctx, e, s, data)
	}
	return false, nil
}

// retry restarts a failed saga where it failed, with fresh attempts.
func (m *machine[D]) retry(ctx context.Context, e env[D], s *state, data *D) error {
	if err := checkRetry(s); err != nil {
		return err
	}
	s.Status = StatusRunning
	if s.Compensation {
		s.Status = StatusCompensating
	}
	s.Attempt = 1
	s.Deadline, s.NextRetryAt = time.Time{}, time.Time{}
	return m.advance(ctx, e, s, data)
}

// abort starts compensating a running saga that has not passed its pivot.
func (m *machine[D]) abort(ctx context.Context, e env[D], s *state, data *D, reason string) error {
	if err := checkAbort(s, m.def.stepKinds()); err != nil {
		return err
	}
	clean := true
	attempts := s.Attempt
	switch {
	case s.awaiting():
		// The step's command is out: it may run, so compensate it too.
		now := e.now()
		e.attemptEnded(s.Step, false, s.Attempt, m.def.steps[s.Step].Name, OutcomeAborted, reason, now, now.Sub(s.StepStartedAt))
		clean = false
	case !s.NextRetryAt.IsZero() && s.Attempt > 1 && s.Step < len(m.def.steps) && m.def.steps[s.Step].Invoke != nil:
		// Backing off between attempts: the earlier attempts' commands
		// went out, and one that timed out may yet run. Compensate the
		// step too (a compensation of an action that never ran does
		// nothing, and makes the late action a no-op).
		clean = false
		attempts = s.Attempt - 1
	}
	s.LastError = "aborted: " + reason
	name := ""
	if s.Step < len(m.def.steps) {
		name = m.def.steps[s.Step].Name
	}
	m.compensateFrom(s, clean, Failure{Step: s.Step, StepName: name, Outcome: OutcomeAborted, Reason: reason, Attempts: attempts})
	return m.advance(ctx, e, s, data)
}

// checkRetry is what Orchestrator.Retry and Admin.Retry check: only a
// failed saga can be retried.
func checkRetry(s *state) error {
	if s.Status != StatusFailed {
		return fmt.Errorf("%w: saga %s is %s; only failed sagas can be retried", ErrWrongState, s.ID, s.Status)
	}
	return nil
}

// checkAbort is what Orchestrator.Abort and Admin.Abort check: only a
// running saga that has not passed its pivot can be aborted. steps are the
// kinds and names of the saga's definition; nil skips the pivot check (an
// Admin that does not know the definition leaves it to the orchestrator).
func checkAbort(s *state, steps []stepKind) error {
	if s.Status != StatusRunning {
		return fmt.Errorf("%w: saga %s is %s; only running sagas can be aborted", ErrWrongState, s.ID, s.Status)
	}
	for i := 0; i < s.Step && i < len(steps); i++ {
		if steps[i].Kind != Compensatable {
			return fmt.Errorf("%w: saga %s is past its pivot (%s) and can only go forward", ErrWrongState, s.ID, steps[i].Name)
		}
	}
	return nil
}

// clone deep-copies data through JSON, the form it is stored in, so that a
// failed step cannot leave half its changes behind.
func clone[D any](data *D) (*D, error) {
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("saga: data does not marshal to JSON: %w", err)
	}
	out := new(D)
	if err := json.Unmarshal(b, out); err != nil {
		return nil, fmt.Errorf("saga: data does not round-trip through JSON: %w", err)
	}
	return out, nil
}
