package saga

import "errors"

// Sentinel errors. Match them with errors.Is.
var (
	// ErrInvalidDefinition means NewDefinition refused the steps; the
	// message says which step and why.
	ErrInvalidDefinition = errors.New("saga: invalid definition")
	// ErrInvalidConfig means a config struct is missing a required field or
	// has a bad value; the message names the field.
	ErrInvalidConfig = errors.New("saga: invalid config")
	// ErrRejected marks a business "no" from a step: it is not retried and
	// the saga compensates. Build one with Reject.
	ErrRejected = errors.New("saga: rejected")
	// ErrNotFound means no saga has that ID (or it belongs to another
	// definition).
	ErrNotFound = errors.New("saga: not found")
	// ErrWrongState means an operator call does not apply to the saga's
	// current status, such as retrying a saga that has not failed, or
	// aborting one past its pivot.
	ErrWrongState = errors.New("saga: operation does not apply in the saga's current state")
	// ErrUnknownVersion means a saga started on a definition version the
	// orchestrator was not given: it is left alone, never run on another
	// version's steps. Run an orchestrator that has the version.
	ErrUnknownVersion = errors.New("saga: definition version not registered")
	// ErrConcurrentUpdate means the saga's version changed under a state
	// change. It should not happen while the row lock is held; the
	// transaction is rolled back and the message retried.
	ErrConcurrentUpdate = errors.New("saga: concurrent update")
)

// ErrInvalidCursor means ListOptions.After is not a cursor that Admin.List
// returned.
var ErrInvalidCursor = errors.New("saga: invalid list cursor")
