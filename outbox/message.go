package outbox

import (
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"
)

// Kafka header names the relay sets on every record. Consumers deduplicate on
// HeaderID; HeaderSchema tells which Avro schema (full name) the value uses.
const (
	HeaderID            = "message_id"
	HeaderType          = "message_type"
	HeaderCorrelationID = "correlation_id"
	HeaderCausationID   = "causation_id"
	HeaderSagaID        = "saga_id"
	HeaderTraceparent   = "traceparent"
	HeaderTracestate    = "tracestate"
)

// Message is one message to publish. Only Topic and Value are required.
type Message struct {
	// ID identifies the message for ever: it is sent as the HeaderID header on
	// every delivery, so consumers can drop duplicates. Defaults to a new
	// UUIDv7.
	ID uuid.UUID
	// Topic is the Kafka topic.
	Topic string
	// Key is the Kafka key, usually the aggregate ID. Messages with the same
	// key reach Kafka in the order their transactions committed. An empty
	// key gives no order guarantee.
	Key string
	// Type is the Avro full name of the value's schema (it is also sent as
	// the HeaderType header). It may be left empty when Value carries its
	// schema, as the types hamba/avro's generator makes do.
	Type string
	// Value is encoded with the schema named by Type: a struct with avro
	// tags, a map[string]any, or a RawValue already in Avro binary.
	Value any
	// CorrelationID ties together every message of one business flow.
	CorrelationID string
	// CausationID is the ID of the message that caused this one.
	CausationID string
	// SagaID is set on saga commands, replies and events.
	SagaID string
	// Headers are extra Kafka headers. The names above are reserved.
	Headers map[string]string
	// SpanContext, when valid, is the trace context stored with the
	// message (and sent as HeaderTraceparent and HeaderTracestate) instead
	// of the one of the ctx given to Write or Queue: code that writes the
	// messages of several traces in one call, as the saga participants
	// and orchestrators do for a batch, keeps each in its own trace.
	SpanContext trace.SpanContext
}
