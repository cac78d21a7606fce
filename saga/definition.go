package saga

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// StepKind says what a step may do when something fails. A saga's steps come
// in this order: compensatable steps, at most one pivot, retriable steps.
// NewDefinition refuses any other order.
type StepKind int

const (
	// Compensatable steps can be undone. When a later step fails, their
	// compensations run in reverse order. A compensatable step without a
	// compensation has nothing to undo (a read-only check, for example).
	// This is the zero value.
	Compensatable StepKind = iota
	// Pivot is the go/no-go step: once it succeeds the saga can only go
	// forward. It has no compensation. If it is rejected, the steps before it
	// are compensated. If its outcome is unknown (it timed out on every
	// attempt of its Retry policy), the saga neither compensates (undoing
	// the steps before it could contradict a pivot that did happen) nor
	// gives up: it keeps asking, re-sending the command with capped backoff
	// (the participant's inbox answers a command it already ran with the
	// reply it stored), running and awaiting the pivot, until a definitive
	// reply comes, an operator acts, or the step's UnknownOutcomeBudget runs
	// out (then it ends failed, and a late reply is still applied). If it
	// keeps answering with errors, the saga ends failed for an operator.
	Pivot
	// Retriable steps come after the pivot and are expected to succeed
	// eventually: they are retried with backoff and never compensated. One
	// that times out keeps being asked, like a pivot. If one is rejected, or
	// keeps answering with errors past its attempts, the saga ends failed.
	Retriable
)

func (k StepKind) String() string {
	switch k {
	case Compensatable:
		return "compensatable"
	case Pivot:
		return "pivot"
	case Retriable:
		return "retriable"
	}
	return fmt.Sprintf("StepKind(%d)", int(k))
}

// LocalFunc is a step (or compensation) that runs in the orchestrator's own
// transaction, inside a savepoint: if it returns an error its database
// changes and its changes to data are undone. Return an error wrapping
// ErrRejected (see Reject) for a business "no" that must not be retried.
type LocalFunc[D any] func(ctx context.Context, tx pgx.Tx, data *D) error

// Invocation is a command sent to a participant through the outbox, whose
// reply the saga then awaits.
type Invocation[D any] struct {
	// Topic is the participant's command topic. Required.
	Topic string
	// Command names the operation, such as "reserve_stock": participants
	// dispatch on it. Required.
	Command string
	// Type is the Avro full name of the payload's schema; the orchestrator's
	// codec must know it. Leave empty (with Payload nil) for a command
	// without a payload.
	Type string
	// Payload builds the command's payload from the saga's data.
	Payload func(data *D) (any, error)
	// PayloadContext is Payload with a context: set one or the other. In a
	// Compensate invocation, FailureFrom(ctx) tells which step failed and
	// why.
	PayloadContext func(ctx context.Context, data *D) (any, error)
	// OnReply, when set, is called with a successful reply so that the
	// saga's data can keep what the participant returned (decode it with
	// Reply.Decode). An error counts as a failure of the step.
	OnReply func(data *D, reply *Reply) error
}

// RetryPolicy bounds the attempts of a step or compensation. Between
// attempts the orchestrator waits InitialBackoff, then twice as long each
// time, never more than MaxBackoff, so a participant that keeps failing is
// not hammered.
type RetryPolicy struct {
	// MaxAttempts is the number of attempts, the first included. Defaults
	// to DefaultMaxAttempts for steps and DefaultCompensationMaxAttempts
	// for compensations.
	MaxAttempts int
	// InitialBackoff is the wait before the second attempt. Defaults to
	// DefaultInitialBackoff.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait. Defaults to DefaultMaxBackoff.
	MaxBackoff time.Duration
}

// Defaults of RetryPolicy and Step.
const (
	DefaultMaxAttempts             = 3
	DefaultCompensationMaxAttempts = 10
	DefaultInitialBackoff          = 200 * time.Millisecond
	DefaultMaxBackoff              = 30 * time.Second
	DefaultTimeout                 = 30 * time.Second
)

func (p RetryPolicy) withDefaults(attempts int) RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = attempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = DefaultInitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = DefaultMaxBackoff
	}
	if p.MaxBackoff < p.InitialBackoff {
		p.MaxBackoff = p.InitialBackoff
	}
	return p
}

// backoff returns the wait before attempt next (2, 3...).
func (p RetryPolicy) backoff(next int) time.Duration {
	d := p.InitialBackoff
	for i := 2; i < next; i++ {
		d *= 2
		if d >= p.MaxBackoff {
			return p.MaxBackoff
		}
	}
	return min(d, p.MaxBackoff)
}

// Step is one step of a saga: either Local or Invoke, with an optional
// compensation (CompensateLocal or Compensate) for compensatable steps.
type Step[D any] struct {
	// Name identifies the step in the history, the metrics and the diagram.
	// Required, unique within the definition.
	Name string
	// Kind defaults to Compensatable.
	Kind StepKind

	// Local runs the step in the orchestrator's transaction.
	Local LocalFunc[D]
	// Invoke sends a command to a participant and awaits its reply.
	Invoke *Invocation[D]

	// CompensateLocal undoes the step in the orchestrator's transaction.
	// FailureFrom(ctx) tells which step failed and why.
	CompensateLocal LocalFunc[D]
	// Compensate sends a compensating command to a participant. It is sent
	// also when the step's outcome is unknown (it timed out): the
	// participant helper makes a compensation of an action that never ran
	// a no-op, and makes the late action itself a no-op.
	Compensate *Invocation[D]

	// Timeout is how long one attempt waits for the participant's reply.
	// The deadline is stored in the database. Defaults to DefaultTimeout.
	Timeout time.Duration
	// Retry bounds the attempts of the step. A rejection is final and not
	// retried; errors and timeouts are. A pivot or retriable step that
	// times out on its last attempt is asked again past MaxAttempts (see
	// UnknownOutcomeBudget), at MaxBackoff intervals at most.
	Retry RetryPolicy
	// CompensationTimeout defaults to Timeout.
	CompensationTimeout time.Duration
	// CompensationRetry bounds the attempts of the compensation; when they
	// run out the saga ends failed.
	CompensationRetry RetryPolicy
	// UnknownOutcomeBudget is, for a pivot or retriable invoked step, how
	// long the saga keeps re-sending the command once it has timed out on
	// every attempt of Retry (the re-asks back off as Retry says, capped at
	// its MaxBackoff). It is counted as the backoffs and timeouts of the
	// re-sent attempts, so the real time is at least this long. When it
	// runs out the saga ends failed, for an operator (Admin.Retry asks
	// again); a definitive reply arriving later is still applied. 0, the
	// default, keeps asking until the participant answers or an operator
	// decides (Admin.Abort, if the saga has not passed its pivot). Not
	// allowed on compensatable steps: one whose outcome is unknown is
	// compensated.
	UnknownOutcomeBudget time.Duration
}

func (s *Step[D]) hasCompensation() bool { return s.CompensateLocal != nil || s.Compensate != nil }

// Definition is a validated, immutable saga definition. D is the saga's
// data, stored as JSON in the saga's row: give it exported fields.
type Definition[D any] struct {
	name    string
	version int
	steps   []Step[D]
}

// NewDefinition checks the steps and returns a definition. name identifies
// the kind of saga (it is stored with each instance and labels metrics);
// version is recorded with each instance, so that you can tell which
// definition a saga started with, and each saga runs on that version's
// steps. Change the version when you change the steps, and give both
// versions to one orchestrator (NewOrchestrator(rt, cfg, v1, v2)) until
// Admin.List shows no unfinished saga of the old one.
func NewDefinition[D any](name string, version int, steps ...Step[D]) (*Definition[D], error) {
	bad := func(format string, a ...any) (*Definition[D], error) {
		return nil, fmt.Errorf("%w: %s: %s", ErrInvalidDefinition, name, fmt.Sprintf(format, a...))
	}
	if strings.TrimSpace(name) == "" {
		return bad("name is empty")
	}
	if len(steps) == 0 {
		return bad("no steps")
	}
	seen := map[string]bool{}
	pivots := 0
	prev := Compensatable
	for i := range steps {
		st := &steps[i]
		switch {
		case st.Name == "":
			return bad("step %d has no Name", i)
		case seen[st.Name]:
			return bad("two steps named %q", st.Name)
		case (st.Local == nil) == (st.Invoke == nil):
			return bad("step %q: set exactly one of Local and Invoke", st.Name)
		case st.CompensateLocal != nil && st.Compensate != nil:
			return bad("step %q: set at most one of CompensateLocal and Compensate", st.Name)
		case st.Kind < Compensatable || st.Kind > Retriable:
			return bad("step %q: unknown kind %d", st.Name, int(st.Kind))
		case st.Kind != Compensatable && st.hasCompensation():
			return bad("step %q: a %s step cannot have a compensation", st.Name, st.Kind)
		case st.Kind < prev:
			return bad("step %q: a %s step cannot follow a %s step (order: compensatable, pivot, retriable)", st.Name, st.Kind, prev)
		}
		if st.Kind == Pivot {
			pivots++
			if pivots > 1 {
				return bad("step %q: more than one pivot", st.Name)
			}
		}
		for _, inv := range []*Invocation[D]{st.Invoke, st.Compensate} {
			if inv == nil {
				continue
			}
			if inv.Topic == "" || inv.Command == "" {
				return bad("step %q: an Invocation needs a Topic and a Command", st.Name)
			}
			if inv.Payload != nil && inv.PayloadContext != nil {
				return bad("step %q: command %q: set at most one of Payload and PayloadContext", st.Name, inv.Command)
			}
			if (inv.Type == "") != (inv.Payload == nil && inv.PayloadContext == nil) {
				return bad("step %q: command %q: set both Type and Payload (or PayloadContext), or neither", st.Name, inv.Command)
			}
		}
		switch {
		case st.UnknownOutcomeBudget < 0:
			return bad("step %q: UnknownOutcomeBudget is negative (0 keeps asking until an operator decides)", st.Name)
		case st.UnknownOutcomeBudget > 0 && (st.Kind == Compensatable || st.Invoke == nil):
			return bad("step %q: UnknownOutcomeBudget is for invoked pivot and retriable steps: a compensatable step whose outcome is unknown is compensated", st.Name)
		}
		seen[st.Name] = true
		prev = st.Kind
		if st.Timeout <= 0 {
			st.Timeout = DefaultTimeout
		}
		if st.CompensationTimeout <= 0 {
			st.CompensationTimeout = st.Timeout
		}
		st.Retry = st.Retry.withDefaults(DefaultMaxAttempts)
		st.CompensationRetry = st.CompensationRetry.withDefaults(DefaultCompensationMaxAttempts)
	}
	return &Definition[D]{name: name, version: version, steps: steps}, nil
}

// MustDefinition is NewDefinition that panics, for package-level variables.
func MustDefinition[D any](name string, version int, steps ...Step[D]) *Definition[D] {
	d, err := NewDefinition(name, version, steps...)
	if err != nil {
		panic(err)
	}
	return d
}

// stepKind is a step's name and kind, what checkAbort needs.
type stepKind struct {
	Name string
	Kind StepKind
}

func (d *Definition[D]) stepKinds() []stepKind {
	ks := make([]stepKind, len(d.steps))
	for i, st := range d.steps {
		ks[i] = stepKind{Name: st.Name, Kind: st.Kind}
	}
	return ks
}

// Name returns the saga type name.
func (d *Definition[D]) Name() string { return d.name }

// Version returns the definition version recorded with each instance.
func (d *Definition[D]) Version() int { return d.version }

// Steps returns the step names in order.
func (d *Definition[D]) Steps() []string {
	out := make([]string, len(d.steps))
	for i, s := range d.steps {
		out[i] = s.Name
	}
	return out
}

// Mermaid renders the definition as a Mermaid flowchart: the steps forward,
// and from each failure the path the state machine takes, edge for edge:
//
//   - A step that fails without effect (a rejected command, or a local step
//     that failed and was rolled back) compensates the steps before it.
//   - An invoked compensatable step whose outcome is unknown (it timed out,
//     or errored, on every attempt, or OnReply refused the reply) is
//     compensated too, then the steps before it.
//   - A pivot or an invoked retriable step that times out is asked again,
//     until a reply (or an operator): undoing the steps before it could
//     contradict a debit that did happen.
//   - A pivot that keeps erroring, and a retriable step that is rejected
//     or keeps erroring, end the saga failed.
//   - A compensation out of attempts ends it failed.
func (d *Definition[D]) Mermaid() string {
	var b strings.Builder
	fmt.Fprintf(&b, "flowchart TD\n")
	fmt.Fprintf(&b, "    start([%s v%d]) --> s0\n", d.name, d.version)
	// compensate names the node where compensating from step i (included)
	// starts.
	compensate := func(i int) string {
		if j := d.firstCompensation(i); j >= 0 {
			return fmt.Sprintf("c%d", j)
		}
		return "compensated([compensated])"
	}
	for i, st := range d.steps {
		what := "local"
		if st.Invoke != nil {
			what = st.Invoke.Command + " → " + st.Invoke.Topic
		}
		shape := fmt.Sprintf("s%d[\"%s<br/>%s<br/><i>%s</i>\"]", i, st.Name, what, st.Kind)
		if st.Kind == Pivot {
			shape = fmt.Sprintf("s%d{{\"%s<br/>%s<br/><i>pivot</i>\"}}", i, st.Name, what)
		}
		next := fmt.Sprintf("s%d", i+1)
		if i == len(d.steps)-1 {
			next = "succeeded([succeeded])"
		}
		fmt.Fprintf(&b, "    %s -->|ok| %s\n", shape, next)
		switch {
		case st.Kind == Retriable:
			if st.Invoke != nil {
				fmt.Fprintf(&b, "    s%d -.->|times out: asks again| s%d\n", i, i)
			}
			fmt.Fprintf(&b, "    s%d -.->|rejected or out of attempts| failed([failed])\n", i)
		case st.Local != nil:
			// Rolled back: nothing of it to undo.
			fmt.Fprintf(&b, "    s%d -.->|fails| %s\n", i, compensate(i-1))
		case st.Kind == Pivot:
			fmt.Fprintf(&b, "    s%d -.->|rejected| %s\n", i, compensate(i-1))
			fmt.Fprintf(&b, "    s%d -.->|times out: asks again| s%d\n", i, i)
			fmt.Fprintf(&b, "    s%d -.->|errors past its attempts| failed([failed])\n", i)
		case st.hasCompensation():
			fmt.Fprintf(&b, "    s%d -.->|rejected| %s\n", i, compensate(i-1))
			fmt.Fprintf(&b, "    s%d -.->|times out or errors| %s\n", i, compensate(i))
		default:
			// Nothing of its own to undo: every failure goes the same way.
			fmt.Fprintf(&b, "    s%d -.->|fails| %s\n", i, compensate(i-1))
		}
	}
	for i := len(d.steps) - 1; i >= 0; i-- {
		st := d.steps[i]
		if !st.hasCompensation() {
			continue
		}
		what := "local"
		if st.Compensate != nil {
			what = st.Compensate.Command + " → " + st.Compensate.Topic
		}
		fmt.Fprintf(&b, "    c%d[/\"undo %s<br/>%s\"/] -->|ok| %s\n", i, st.Name, what, compensate(i-1))
		fmt.Fprintf(&b, "    c%d -.->|attempts exhausted| failed([failed])\n", i)
	}
	return b.String()
}

// firstCompensation returns the highest step index <= i with a compensation.
func (d *Definition[D]) firstCompensation(i int) int {
	for ; i >= 0; i-- {
		if d.steps[i].hasCompensation() {
			return i
		}
	}
	return -1
}

// Reject returns an error wrapping ErrRejected: return it from a LocalFunc
// (or a participant handler) for a business "no" that retrying cannot change.
func Reject(reason string) error { return &rejection{reason: reason} }

type rejection struct{ reason string }

func (r *rejection) Error() string        { return "rejected: " + r.reason }
func (r *rejection) Is(target error) bool { return target == ErrRejected }

// rejectionReason returns the reason given to Reject, or err's text.
func rejectionReason(err error) string {
	var r *rejection
	if errors.As(err, &r) {
		return r.reason
	}
	return err.Error()
}
