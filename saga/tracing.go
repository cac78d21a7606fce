package saga

import (
	"context"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/tracing"
	"github.com/sagabox/sagabox/outbox"
)

// TracerProviderRuntime is a Runtime that also hands out a
// trace.TracerProvider (sagabox.Client does): orchestrators, participants
// and consumers use it unless their config sets TracerProvider. Without
// either they use the global provider (otel.GetTracerProvider).
type TracerProviderRuntime interface {
	Runtime
	TracerProvider() trace.TracerProvider
}

// tracerOf picks the tracer: the config's provider, the runtime's, or the
// global one.
func tracerOf(cfg trace.TracerProvider, rt Runtime) trace.Tracer {
	if cfg == nil {
		if t, ok := rt.(TracerProviderRuntime); ok {
			cfg = t.TracerProvider()
		}
	}
	return tracing.Tracer(cfg, "saga")
}

// recordTrace is the trace context a consumed record carries (its
// traceparent and tracestate headers), invalid when it has none.
func recordTrace(msg *message.Message) trace.SpanContext {
	return tracing.Parse(msg.Metadata.Get(outbox.HeaderTraceparent), msg.Metadata.Get(outbox.HeaderTracestate))
}

// startProcess starts the "process <topic>" span of a consumed record that
// carries a trace context, as its child. A record without one starts no
// span (nil): tracing off costs nothing. attrs adds the caller's
// attributes, only when the span records.
func startProcess(ctx context.Context, tr trace.Tracer, parent trace.SpanContext, topic, group string, msg *message.Message,
	attrs func(span trace.Span)) (context.Context, trace.Span) {
	if !parent.IsValid() {
		return ctx, nil
	}
	ctx, span := tr.Start(tracing.ContextWith(ctx, parent), "process "+topic, trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(tracing.Messaging(tracing.OpProcess, "process", topic)...)
		span.SetAttributes(tracing.ConsumerGroup(group))
		if msg != nil {
			span.SetAttributes(tracing.MessageID(msg.UUID), tracing.KafkaKey(msg.Metadata.Get(outbox.MetadataKey)))
			if p := msg.Metadata.Get(outbox.MetadataPartition); p != "" {
				span.SetAttributes(tracing.Partition(p))
			}
			if o, err := strconv.Atoi(msg.Metadata.Get(outbox.MetadataOffset)); err == nil {
				span.SetAttributes(tracing.KafkaOffset(o))
			}
		}
		if attrs != nil {
			attrs(span)
		}
	}
	return ctx, span
}

// sagaAttrs are the attributes of one attempt of a saga's step.
func sagaAttrs(span trace.Span, id, typ string, step int, name string, attempt int, comp bool) {
	span.SetAttributes(tracing.SagaID.String(id), tracing.StepIndex.Int(step), tracing.Attempt.Int(attempt),
		tracing.Compensation.Bool(comp))
	if typ != "" {
		span.SetAttributes(tracing.SagaType.String(typ))
	}
	if name != "" {
		span.SetAttributes(tracing.Step.String(name))
	}
}

// endSpan ends span (nil is fine), recording err.
func endSpan(span trace.Span, err error, attrs ...attribute.KeyValue) {
	if span == nil {
		return
	}
	if span.IsRecording() {
		span.SetAttributes(attrs...)
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
	}
	span.End()
}

// withSpan is ctx carrying span, or ctx when span is nil.
func withSpan(ctx context.Context, span trace.Span) context.Context {
	if span == nil {
		return ctx
	}
	return trace.ContextWithSpan(ctx, span)
}

// spanContext is span's context; invalid for nil.
func spanContext(span trace.Span) trace.SpanContext {
	if span == nil {
		return trace.SpanContext{}
	}
	return span.SpanContext()
}
