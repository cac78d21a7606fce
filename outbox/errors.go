package outbox

import (
	"errors"
	"fmt"
)

// Sentinel errors. Match them with errors.Is; the wrapped errors carry the
// details (which message, which field).
var (
	// ErrInvalidConfig means a config struct (RelayConfig, WriterConfig) is
	// missing a required field or holds a value out of range; the wrapping
	// error names the field.
	ErrInvalidConfig = errors.New("outbox: invalid config")

	// ErrInvalidMessage means a message was refused before it reached the
	// table: no topic, an unknown type, or a value that does not fit its
	// schema. Nothing of the Write call was written.
	ErrInvalidMessage = errors.New("outbox: invalid message")

	// ErrUnknownSchema means the message's type names no schema the Codec
	// knows. Add the schema to the Codec (outbox.NewCodec) at start-up.
	ErrUnknownSchema = errors.New("outbox: unknown schema")

	// ErrNotFound means an operator call named a message that is not there
	// (or not in the state the call needs, such as parked).
	ErrNotFound = errors.New("outbox: message not found")
)

// MessageError says which message of a Write call was refused and why. When
// the value does not fit its schema, Err names the field.
type MessageError struct {
	Index int    // position in the Write call
	Topic string // the message's topic
	Type  string // the Avro full name of its schema, when known
	Err   error
}

func (e *MessageError) Error() string {
	return fmt.Sprintf("outbox: message %d (topic %q, type %q) refused: %v", e.Index, e.Topic, e.Type, e.Err)
}

func (e *MessageError) Unwrap() []error { return []error{ErrInvalidMessage, e.Err} }
