package saga

import (
	"context"
	"fmt"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/tracing"
	"github.com/sagabox/sagabox/outbox"
)

// DefaultConsumerNackResendSleep is how long a Consumer waits before an
// event whose handler failed is handled again.
const DefaultConsumerNackResendSleep = 500 * time.Millisecond

// Event is one record a Consumer handles, as the outbox relay published it.
type Event struct {
	// ID is the message's stable ID (the outbox's message_id header): the
	// same on every redelivery.
	ID    string
	Topic string
	Key   string
	// Type is the Avro full name of the value's schema.
	Type string
	// Headers are the record's headers (correlation, causation, saga ID,
	// trace context and the application's own).
	Headers map[string]string
	// Value is the Confluent-framed Avro value; read it with Decode.
	Value []byte

	decoder *outbox.Decoder
}

// Decode decodes the value into v (a pointer to a generated type, or to a
// struct with avro tags). An error wrapping outbox.ErrRegistryUnavailable
// is transient: return it, and the event comes again. Any other error will
// not go away.
func (e *Event) Decode(v any) error {
	_, err := e.decoder.Decode(e.Value, v)
	return err
}

// EventHandler handles one event in tx, the transaction that also records
// the event's ID in the consumer's inbox: the handler's writes and the
// record commit together, so a redelivered event is skipped before it gets
// here. Return an error to roll back and have the event delivered again
// after ConsumerConfig.NackResendSleep.
type EventHandler func(ctx context.Context, tx pgx.Tx, e *Event) error

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	// Name identifies the consumer in the inbox (its deduplication key
	// space) and the logs. Two consumers of one topic must have different
	// names. Required.
	Name string
	// Topic is what to consume. Required.
	Topic string
	// Handler handles each event. Required.
	Handler EventHandler
	// AfterCommit, when set, is called with each event once the
	// transaction that handled it (or found it in the inbox, a redelivery)
	// has committed: what it wrote is visible to every reader. For
	// in-process signals, such as waking requests waiting for a read model
	// to catch up; it must not block.
	AfterCommit func(ctx context.Context, e *Event)
	// ConsumerGroup defaults to Name.
	ConsumerGroup string
	// NackResendSleep defaults to DefaultConsumerNackResendSleep.
	NackResendSleep time.Duration
	// OverwriteSaramaConfig replaces SaramaConfig().
	OverwriteSaramaConfig *sarama.Config
	// TracerProvider makes the "process" span of each event whose record
	// carries a trace context, a child of it; the handler's ctx carries
	// it, so what the handler writes to the outbox stays in the trace.
	// Defaults to the Runtime's (TracerProviderRuntime), else the global
	// provider.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns a copy of c with every unset field defaulted.
func (c ConsumerConfig) WithDefaults() ConsumerConfig {
	if c.ConsumerGroup == "" {
		c.ConsumerGroup = c.Name
	}
	if c.NackResendSleep == 0 {
		c.NackResendSleep = DefaultConsumerNackResendSleep
	}
	return c
}

func (c ConsumerConfig) validate() error {
	switch {
	case c.Name == "":
		return fmt.Errorf("%w: ConsumerConfig.Name is required", ErrInvalidConfig)
	case c.Topic == "":
		return fmt.Errorf("%w: ConsumerConfig.Topic is required", ErrInvalidConfig)
	case c.Handler == nil:
		return fmt.Errorf("%w: ConsumerConfig.Handler is required", ErrInvalidConfig)
	case c.NackResendSleep < 0:
		return fmt.Errorf("%w: ConsumerConfig.NackResendSleep must not be negative", ErrInvalidConfig)
	}
	return nil
}

// Consumer is an idempotent event consumer: each event is handled in a
// transaction that also records its ID in the inbox (sagabox.saga_inbox),
// so redeliveries have no second effect. Use it for everything a service
// consumes that is not a saga command or reply, such as the events that
// feed a read model.
type Consumer struct {
	cfg     ConsumerConfig
	rt      Runtime
	inbox   *Inbox
	decoder *outbox.Decoder
	once    runOnce
	tracer  trace.Tracer
	cm      *consumerMetrics
	events  *prometheus.CounterVec // by outcome
}

// NewConsumer checks cfg and attaches the consumer to rt, whose Run runs
// it. Without brokers it is built but not attached: there is nothing to
// consume.
func NewConsumer(rt Runtime, cfg ConsumerConfig) (*Consumer, error) {
	if rt == nil {
		return nil, fmt.Errorf("%w: NewConsumer needs a Runtime (a sagabox.Client)", ErrInvalidConfig)
	}
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Consumer{cfg: cfg, rt: rt, inbox: NewInbox(rt.Pool(), cfg.Name), tracer: tracerOf(cfg.TracerProvider, rt)}
	var err error
	if c.cm, err = newConsumerMetrics(rt.Registerer(), "consumer_"+cfg.Name); err != nil {
		return nil, err
	}
	if c.events, err = newEventMetrics(rt.Registerer(), "consumer_"+cfg.Name); err != nil {
		return nil, err
	}
	if reg := rt.Registry(); reg != nil {
		c.decoder = outbox.NewDecoder(reg, rt.Codec())
	}
	if len(rt.Brokers()) > 0 {
		if err := rt.Attach("saga.consumer."+cfg.Name, c.Run); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Run consumes until ctx is done, then waits for the event in flight and
// returns nil. It can be called once; a Runtime's Run calls it.
func (c *Consumer) Run(ctx context.Context) error {
	if err := c.once.start("saga.Consumer " + c.cfg.Name); err != nil {
		return err
	}
	if len(c.rt.Brokers()) == 0 || c.decoder == nil {
		return fmt.Errorf("%w: Consumer %s: Run needs the runtime's brokers and registry", ErrInvalidConfig, c.cfg.Name)
	}
	handled, duplicate, failed := c.events.WithLabelValues("handled"), c.events.WithLabelValues("duplicate"), c.events.WithLabelValues("failed")
	h := c.inbox.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context()
		tx, _ := Tx(ctx)
		if ran, ok := ctx.Value(ranKey{}).(*bool); ok {
			*ran = true
		}
		return nil, c.cfg.Handler(ctx, tx, c.event(msg))
	})
	return runRouter(ctx, consumeConfig{Brokers: c.rt.Brokers(), ConsumerGroup: c.cfg.ConsumerGroup, Topic: c.cfg.Topic,
		Sarama: c.cfg.OverwriteSaramaConfig, NackResendSleep: c.cfg.NackResendSleep, Logger: c.rt.Logger(),
		Name: "consumer_" + c.cfg.Name, Metrics: c.cm}, func(msg *message.Message) error {
		ctx, span := startProcess(msg.Context(), c.tracer, recordTrace(msg), c.cfg.Topic, c.cfg.ConsumerGroup, msg, func(span trace.Span) {
			if id := msg.Metadata.Get(outbox.HeaderSagaID); id != "" {
				span.SetAttributes(tracing.SagaID.String(id))
			}
		})
		ran := false
		msg.SetContext(context.WithValue(ctx, ranKey{}, &ran))
		_, err := h(msg)
		switch {
		case err != nil:
			failed.Inc()
		case ran:
			handled.Inc()
		default:
			duplicate.Inc() // the inbox had it: the handler did not run
		}
		if err == nil && c.cfg.AfterCommit != nil {
			c.cfg.AfterCommit(msg.Context(), c.event(msg))
		}
		endSpan(span, err)
		return err
	})
}

// ranKey is the context key of a flag the handler sets when the inbox let
// it run: a record it did not run for was a duplicate.
type ranKey struct{}

func (c *Consumer) event(msg *message.Message) *Event {
	md := msg.Metadata
	headers := make(map[string]string, len(md))
	for k, v := range md {
		headers[k] = v
	}
	return &Event{ID: msg.UUID, Topic: md.Get(outbox.MetadataTopic), Key: md.Get(outbox.MetadataKey),
		Type: md.Get(outbox.HeaderType), Headers: headers, Value: msg.Payload, decoder: c.decoder}
}
