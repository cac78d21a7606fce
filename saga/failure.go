package saga

import "context"

// Failure is what made a saga compensate: the step that failed and why. It
// is stored with the saga (so it survives restarts and is the same whichever
// orchestrator runs the compensation) and handed to every compensation:
// CompensateLocal and Invocation.PayloadContext of a Compensate read it with
// FailureFrom.
type Failure struct {
	// Step is the index of the step that failed; StepName its name.
	Step     int    `json:"step"`
	StepName string `json:"step_name"`
	// Outcome is how its last attempt ended: OutcomeRejected (a business
	// "no" of the participant or a Reject of the local step), OutcomeError
	// (an error reply, a local step's error, or an OnReply that refused the
	// reply), OutcomeTimedOut (no reply before the deadline) or
	// OutcomeAborted (an operator's Abort).
	Outcome Outcome `json:"outcome"`
	// Reason is the participant's rejection or error reason, the local
	// step's error (the text given to Reject), the OnReply error, "timed
	// out after N attempts", or the reason given to Abort.
	Reason string `json:"reason"`
	// Attempts is how many attempts the step had.
	Attempts int `json:"attempts"`
}

// Rejected reports whether the step failed on a business "no": the
// participant rejected the command, or the local step returned Reject.
// Timeouts, errors and aborts are not rejections.
func (f Failure) Rejected() bool { return f.Outcome == OutcomeRejected }

// TimedOut reports whether the step ran out of attempts without a reply.
func (f Failure) TimedOut() bool { return f.Outcome == OutcomeTimedOut }

type failureKey struct{}

func withFailure(ctx context.Context, f *Failure) context.Context {
	if f == nil {
		return ctx
	}
	return context.WithValue(ctx, failureKey{}, *f)
}

// FailureFrom returns the failure that made the saga compensate, from the
// context given to a compensation (CompensateLocal, or the PayloadContext of
// a Compensate invocation). It returns false outside a compensation, and for
// a saga that started compensating before the failure was recorded (a saga
// row written by a version of this package without it).
func FailureFrom(ctx context.Context) (Failure, bool) {
	f, ok := ctx.Value(failureKey{}).(Failure)
	return f, ok
}
