// Package tracing holds what the outbox and saga packages share to trace
// with OpenTelemetry: the tracer lookup, the W3C trace context as it is
// stored in a table column or a Kafka header, and the attribute names.
//
// Tracing off must cost nothing: callers build attributes only for a span
// that IsRecording, and a message without a trace context starts no span
// where it need not.
package tracing

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName prefixes the instrumentation scope of every sagabox tracer.
const ScopeName = "github.com/sagabox/sagabox/"

// Tracer returns the tracer of one sagabox package from tp, or from the
// global provider when tp is nil (which forwards to whatever provider is
// set globally later, and is a no-op until then).
func Tracer(tp trace.TracerProvider, pkg string) trace.Tracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tp.Tracer(ScopeName + pkg)
}

// w3c is the wire format of every trace context sagabox stores or sends.
var w3c propagation.TraceContext

// pair is a carrier of exactly the two W3C fields, without a map.
type pair struct{ tp, ts string }

func (p *pair) Get(k string) string {
	switch k {
	case "traceparent":
		return p.tp
	case "tracestate":
		return p.ts
	}
	return ""
}

func (p *pair) Set(k, v string) {
	switch k {
	case "traceparent":
		p.tp = v
	case "tracestate":
		p.ts = v
	}
}

func (p *pair) Keys() []string { return []string{"traceparent", "tracestate"} }

// Format returns sc as W3C traceparent and tracestate ("" for an invalid
// span context).
func Format(sc trace.SpanContext) (traceparent, tracestate string) {
	if !sc.IsValid() {
		return "", ""
	}
	var p pair
	w3c.Inject(trace.ContextWithSpanContext(context.Background(), sc), &p)
	return p.tp, p.ts
}

// FromContext is Format of ctx's span context.
func FromContext(ctx context.Context) (traceparent, tracestate string) {
	return Format(trace.SpanContextFromContext(ctx))
}

// Parse reads a W3C trace context; an empty or malformed traceparent is
// the invalid span context. The result is remote.
func Parse(traceparent, tracestate string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	p := pair{traceparent, tracestate}
	return trace.SpanContextFromContext(w3c.Extract(context.Background(), &p))
}

// ContextWith returns ctx carrying the remote parent sc when it is valid,
// and ctx unchanged otherwise.
func ContextWith(ctx context.Context, sc trace.SpanContext) context.Context {
	if !sc.IsValid() {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// Attribute keys of sagabox's own span attributes.
const (
	SagaID       = attribute.Key("sagabox.saga.id")
	SagaType     = attribute.Key("sagabox.saga.type")
	Step         = attribute.Key("sagabox.saga.step")
	StepIndex    = attribute.Key("sagabox.saga.step_index")
	Attempt      = attribute.Key("sagabox.saga.attempt")
	Compensation = attribute.Key("sagabox.saga.compensation")
	Outcome      = attribute.Key("sagabox.saga.outcome")
	Command      = attribute.Key("sagabox.saga.command")
	Duplicate    = attribute.Key("sagabox.saga.duplicate")
	Timer        = attribute.Key("sagabox.saga.timer")
	Participant  = attribute.Key("sagabox.saga.participant")
)

// Messaging returns the semantic-convention attributes of a Kafka
// operation on destination (operation is "send", "process" or "create";
// name is the system-specific operation name, such as "publish").
func Messaging(op attribute.KeyValue, name, destination string) []attribute.KeyValue {
	return []attribute.KeyValue{semconv.MessagingSystemKafka, op, semconv.MessagingOperationName(name),
		semconv.MessagingDestinationName(destination)}
}

// Operation types, re-exported for the callers.
var (
	OpSend    = semconv.MessagingOperationTypeSend
	OpProcess = semconv.MessagingOperationTypeProcess
	OpCreate  = semconv.MessagingOperationTypeCreate
)

// Re-exported attribute constructors.
var (
	MessageID        = semconv.MessagingMessageID
	ConsumerGroup    = semconv.MessagingConsumerGroupName
	BatchCount       = semconv.MessagingBatchMessageCount
	KafkaKey         = semconv.MessagingKafkaMessageKey
	Partition        = semconv.MessagingDestinationPartitionID
	KafkaOffset      = semconv.MessagingKafkaOffset
	DBSystemPostgres = semconv.DBSystemNamePostgreSQL
	DBCollection     = semconv.DBCollectionName
	DBOperation      = semconv.DBOperationName
)
