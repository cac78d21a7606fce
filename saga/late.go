package saga

import (
	"context"
	"fmt"
	"time"
)

// LateDisposition is what the orchestrator did with a late reply.
type LateDisposition string

const (
	// LateApplied: the saga still waited on the step (a pivot or retriable
	// step whose outcome was unknown, also once failed or retried by an
	// operator) and used the reply.
	LateApplied LateDisposition = "applied"
	// LateCompensated: the action succeeded after the saga had compensated
	// past it; its compensation was sent so that no effect stays behind.
	LateCompensated LateDisposition = "compensated"
	// LateRecorded: the saga can do nothing with the reply (a pivot has no
	// compensation; a compensation answered after the saga moved on). It
	// is kept for an operator and counted.
	LateRecorded LateDisposition = "recorded"
)

// lateDispositions are every LateDisposition, for the metric's series.
var lateDispositions = []LateDisposition{LateApplied, LateCompensated, LateRecorded}

// LateReply is a definitive reply (succeeded or rejected) that came for an
// attempt the saga had stopped waiting for, and that told it something its
// history did not have. Admin.Get lists them in Info.LateReplies.
type LateReply struct {
	Step         int
	Name         string
	Compensation bool
	Attempt      int
	Outcome      Outcome
	Reason       string
	Disposition  LateDisposition
	// Note says why, in words.
	Note       string
	ReceivedAt time.Time
}

// keepAsking reports whether a pivot or retriable step that timed out on
// attempt (its retry budget spent) is asked again. With a budget, the
// re-asks go on while the time they take (each one's backoff and timeout,
// as the policy says; the real time is longer) stays within it.
func (st *Step[D]) keepAsking(attempt int) bool {
	if st.UnknownOutcomeBudget == 0 {
		return true
	}
	var spent time.Duration
	for a := st.Retry.MaxAttempts + 1; a <= attempt+1; a++ {
		if spent += st.Retry.backoff(a) + st.Timeout; spent > st.UnknownOutcomeBudget {
			return false
		}
	}
	return true
}

// onLateReply handles a reply that is not the one the saga waits for (see
// onReply). Off the happy path: it may read the history and write a
// LateReply row. It returns true when the reply changed the saga's state.
//
// Error replies say that nothing was done, so they are per attempt and
// only the attempt in flight uses them. A definitive reply (succeeded,
// rejected) is what the participant's inbox answers every attempt of the
// step in that phase with:
//   - for a pivot or retriable step the saga is still on (waiting, backing
//     off, re-asking after a timeout, or failed there), it is applied,
//     whatever its attempt: nothing else can be done about such a step, and
//     the answer is the one any attempt would get;
//   - for a compensatable step, an older attempt's reply is left to the
//     attempt in flight, which gets the same answer;
//   - otherwise, unless the history already has the step's outcome (a
//     duplicate), it is recorded (saga_late_replies) and, for an action
//     that succeeded after the saga compensated past it, its compensation
//     is sent.
func (m *machine[D]) onLateReply(ctx context.Context, e env[D], s *state, data *D, r *Reply) (bool, error) {
	if r.Outcome != OutcomeSucceeded && r.Outcome != OutcomeRejected || r.Step < 0 || r.Step >= len(m.def.steps) {
		return false, nil
	}
	st := &m.def.steps[r.Step]
	l := LateReply{Step: r.Step, Name: st.Name, Compensation: r.Compensation, Attempt: r.Attempt, Outcome: r.Outcome,
		Reason: r.Reason, ReceivedAt: e.now()}
	waiting := !r.Compensation && st.Kind != Compensatable && st.Invoke != nil && r.Step == s.Step && !s.Compensation
	if waiting && s.Status == StatusRunning {
		return m.applyLate(ctx, e, s, data, r, l)
	}
	sameAttemptLine := r.Step == s.Step && r.Compensation == s.Compensation
	if !waiting && sameAttemptLine && (s.Status == StatusRunning || s.Status == StatusCompensating || s.Status == StatusFailed) {
		// Still on that step and phase: the attempt in flight (or the
		// next, or an operator's retry) gets the same answer.
		return false, nil
	}
	if known, err := e.knownOutcome(ctx, s, r.Step, r.Compensation); err != nil || known {
		return false, err
	}
	if waiting && s.Status == StatusFailed {
		// Failed on this step (its budget spent, or it kept erroring)
		// without a definitive answer: this is it.
		return m.applyLate(ctx, e, s, data, r, l)
	}
	l.Disposition = LateRecorded
	var cmd *outCommand
	passed := s.Status == StatusCompensated || s.Compensation && s.Step < r.Step
	switch {
	case r.Compensation:
		l.Note = "a compensation answered after the saga had moved on"
	case r.Outcome == OutcomeRejected:
		l.Note = "the step was refused after the saga had moved on: nothing to undo"
	case s.Compensation && s.Step == r.Step:
		l.Note = "the action succeeded after the saga gave up on it; its compensation is under way (if the saga failed, an operator's retry resumes it)"
	case !passed:
		l.Note = fmt.Sprintf("the action succeeded but the saga (%s at step %d) did not wait for it", s.Status, s.Step)
	case st.Compensate != nil:
		inv := st.Compensate
		// Attempt 0: outside the compensation's own attempts, so that
		// neither its command nor its reply passes for one of them.
		env, err := m.command(withFailure(ctx, s.Failure), s, r.Step, 0, true, inv, st.Name, data)
		if err != nil {
			return false, err
		}
		cmd = &outCommand{Topic: inv.Topic, Envelope: env}
		l.Disposition = LateCompensated
		l.Note = "the action succeeded after the saga had compensated past it: its compensation " + inv.Command + " was sent"
	case st.CompensateLocal != nil:
		l.Note = "the action succeeded after the saga had compensated past it; its compensation is local and is not run twice: undo it by hand"
	case st.Kind == Pivot:
		l.Note = "the pivot succeeded after the saga was aborted; a pivot has no compensation: undo it by hand"
	default:
		l.Note = "the action succeeded after the saga had compensated past it; the step has no compensation"
	}
	return false, e.late(ctx, s, l, cmd)
}

// applyLate applies a definitive reply to the pivot or retriable step the
// saga is on, as the answer to its current attempt: the one in flight, or,
// when backing off or failed, one recorded for the reply.
func (m *machine[D]) applyLate(ctx context.Context, e env[D], s *state, data *D, r *Reply, l LateReply) (bool, error) {
	st := &m.def.steps[s.Step]
	l.Disposition = LateApplied
	was := "waiting"
	switch {
	case s.Status == StatusFailed:
		was = "failed"
	case !s.awaiting():
		was = "backing off"
	}
	if !s.awaiting() {
		if s.Status == StatusFailed {
			s.Attempt++
			s.Status = StatusRunning
		}
		// No attempt in flight: the reply is the answer of one started
		// and ended now.
		now := e.now()
		e.attemptStarted(s.Step, false, s.Attempt, st.Name, now)
		s.Deadline, s.NextRetryAt, s.StepStartedAt, s.StepName = now, time.Time{}, now, st.Name
	}
	l.Note = fmt.Sprintf("applied as the answer to attempt %d (the saga was %s)", s.Attempt, was)
	if err := e.late(ctx, s, l, nil); err != nil {
		return false, err
	}
	cur := *r
	cur.Attempt = s.Attempt
	return m.onReply(ctx, e, s, data, &cur)
}
