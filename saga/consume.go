package saga

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/sagabox/sagabox/internal/saramametrics"
	"github.com/sagabox/sagabox/internal/tracing"
	"github.com/sagabox/sagabox/internal/wmlog"
	"github.com/sagabox/sagabox/outbox"
)

// SaramaConfig returns the consumer configuration the saga consumers use
// unless overridden: the watermill-kafka defaults, starting from the oldest
// offset when a consumer group has none (a reply written before the group
// first joined must not be skipped), and Sarama's own go-metrics off
// (sagabox exports Prometheus metrics; Sarama's cost CPU on every fetch).
func SaramaConfig() *sarama.Config {
	c := kafka.DefaultSaramaSubscriberConfig()
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.MetricRegistry = saramametrics.Off()
	c.ClientID = "sagabox-saga"
	return c
}

// consumeConfig is what runRouter needs.
type consumeConfig struct {
	Brokers         []string
	ConsumerGroup   string
	Topic           string
	Sarama          *sarama.Config
	NackResendSleep time.Duration
	Logger          *slog.Logger
	Name            string
	Metrics         *consumerMetrics // nil: none
}

// routerCloseTimeout bounds how long a stopping consumer waits for the
// message in flight.
const routerCloseTimeout = 30 * time.Second

// runRouter consumes topic with a watermill router until ctx is done, then
// closes the router, which waits for the handler in flight.
func runRouter(ctx context.Context, c consumeConfig, h message.NoPublishHandlerFunc) error {
	wlog := wmlog.New(c.Logger)
	sc := c.Sarama
	if sc == nil {
		sc = SaramaConfig()
	}
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Brokers:               c.Brokers,
		Unmarshaler:           outbox.KafkaUnmarshaler{},
		OverwriteSaramaConfig: sc,
		ConsumerGroup:         c.ConsumerGroup,
		NackResendSleep:       c.NackResendSleep,
		ReconnectRetrySleep:   200 * time.Millisecond,
	}, wlog)
	if err != nil {
		return fmt.Errorf("saga: %s: subscriber: %w", c.Name, err)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: routerCloseTimeout}, wlog)
	if err != nil {
		return fmt.Errorf("saga: %s: router: %w", c.Name, err)
	}
	if m := c.Metrics; m != nil {
		ok, retry, inner := m.consumed.WithLabelValues(consumedOK), m.consumed.WithLabelValues(consumedRetry), h
		h = func(msg *message.Message) error {
			if ts, found := kafka.MessageTimestampFromCtx(msg.Context()); found && !ts.IsZero() {
				m.recordAge.Observe(time.Since(ts).Seconds())
			}
			err := inner(msg)
			if err != nil {
				retry.Inc()
			} else {
				ok.Inc()
			}
			return err
		}
	}
	router.AddConsumerHandler(c.Name, c.Topic, sub, h)
	done := make(chan error, 1)
	go func() { done <- router.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-ctx.Done():
	case err := <-done:
		if err != nil {
			return fmt.Errorf("saga: %s: router: %w", c.Name, err)
		}
		return errors.New("saga: " + c.Name + ": router stopped")
	}
	// A router closed before it is running never lets its Run return (a
	// service stopped right after it started would hang): let it start
	// first, for as long as a close may take.
	select {
	case <-router.Running():
	case err := <-done:
		if err != nil {
			return fmt.Errorf("saga: %s: router: %w", c.Name, err)
		}
		return nil
	case <-time.After(routerCloseTimeout):
	}
	closeErr := router.Close()
	if err := <-done; err != nil {
		return fmt.Errorf("saga: %s: router: %w", c.Name, err)
	}
	if closeErr != nil {
		return fmt.Errorf("saga: %s: close router: %w", c.Name, closeErr)
	}
	return nil
}

// deadLetter writes a record that cannot be decoded to the dead-letter topic
// through the outbox, with the reason, so the partition moves on.
func writeDeadLetter(ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}, w *outbox.Writer, topic string, msg *message.Message, reason error) error {
	md := msg.Metadata
	part, _ := strconv.Atoi(md.Get(outbox.MetadataPartition))
	off, _ := strconv.ParseInt(md.Get(outbox.MetadataOffset), 10, 64)
	headers := map[string]string{}
	for k, v := range md {
		headers[k] = v
	}
	ctx = tracing.ContextWith(ctx, recordTrace(msg)) // the dead letter stays in the record's trace
	dl := deadLetter{Topic: md.Get(outbox.MetadataTopic), Partition: part, Offset: off,
		Key: md.Get(outbox.MetadataKey), Reason: reason.Error(), Value: msg.Payload, Headers: headers}
	if dl.Value == nil {
		dl.Value = []byte{}
	}
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		return w.Write(ctx, tx, outbox.Message{Topic: topic, Key: dl.Key, Type: DeadLetterType, Value: dl,
			CausationID: msg.UUID, SagaID: md.Get(outbox.HeaderSagaID), CorrelationID: md.Get(outbox.HeaderCorrelationID)})
	})
}

// undecodable reports decode errors that will never go away: dead-letter
// them. Anything else (the registry is down) is retried.
func undecodable(err error) bool {
	return errors.Is(err, outbox.ErrNotAvro) || errors.Is(err, outbox.ErrUnknownSchemaID) ||
		errors.Is(err, outbox.ErrUndecodable) || errors.Is(err, errNotEnvelope)
}

var errNotEnvelope = errors.New("saga: not a saga envelope")

// envelope is a command or reply envelope.
type envelope interface{ sagaID() string }

func (e *commandEnvelope) sagaID() string { return e.SagaID }
func (e *replyEnvelope) sagaID() string   { return e.SagaID }

// decodeEnvelope decodes a consumed record into env, which must be an
// envelope of type want (CommandType or ReplyType), and returns its saga ID.
// A record that is something else, or whose saga ID does not parse, is
// errNotEnvelope (undecodable: dead-lettered).
func decodeEnvelope(d *outbox.Decoder, payload []byte, want string, env envelope) (uuid.UUID, error) {
	if d == nil {
		return uuid.Nil, fmt.Errorf("%w: a Registry is required to decode a %s", ErrInvalidConfig, want)
	}
	name, err := d.Decode(payload, env)
	if err != nil {
		return uuid.Nil, err
	}
	if name != want {
		return uuid.Nil, fmt.Errorf("%w: got a %s where a %s belongs", errNotEnvelope, name, want)
	}
	id, err := uuid.Parse(env.sagaID())
	if err != nil {
		return uuid.Nil, fmt.Errorf("%w: saga_id %q: %v", errNotEnvelope, env.sagaID(), err)
	}
	return id, nil
}

// inEnvelope reports whether a consumed record is in the envelope format
// older versions wrote (a sagabox.saga.Command or Reply value), rather than
// a payload record with the saga metadata in headers. A record without a
// message_type header is tried as an envelope, whose decoding says what it
// is.
func inEnvelope(msg *message.Message) bool {
	switch msg.Metadata.Get(outbox.HeaderType) {
	case "", CommandType, ReplyType:
		return true
	}
	return false
}

// sagaRecord is what the headers and value of a command or reply in the
// header format say in common.
type sagaRecord struct {
	sagaID       uuid.UUID
	step         int
	attempt      int
	compensation bool
	payloadType  string // "" for Empty
	payload      []byte // the value's Avro binary, written with the schema framed's ID names
	framed       []byte
	md           message.Metadata
	err          error // the first header that is missing or does not parse
}

// decodeRecord reads a command's or reply's saga metadata from its headers
// and checks that its value's schema, fetched from the registry by ID, is the
// one message_type names. The payload itself is decoded when the handler
// asks (Command.Decode, Reply.Decode), resolved against the reader's schema.
// Missing or malformed headers are errNotEnvelope (dead-lettered).
func decodeRecord(d *outbox.Decoder, msg *message.Message, what string) (*sagaRecord, error) {
	if d == nil {
		return nil, fmt.Errorf("%w: a Registry is required to decode a %s", ErrInvalidConfig, what)
	}
	name, err := d.Name(msg.Payload)
	if err != nil {
		return nil, err
	}
	md := msg.Metadata
	if t := md.Get(outbox.HeaderType); t != name {
		return nil, fmt.Errorf("%w: the %s header says %s, the value's schema is %s", errNotEnvelope, outbox.HeaderType, t, name)
	}
	r := &sagaRecord{md: md, framed: msg.Payload, payloadType: name, payload: msg.Payload[5:]}
	if r.sagaID, err = uuid.Parse(md.Get(outbox.HeaderSagaID)); err != nil {
		return nil, fmt.Errorf("%w: a %s needs the %s header, a saga ID: %q: %v", errNotEnvelope, what, outbox.HeaderSagaID, md.Get(outbox.HeaderSagaID), err)
	}
	r.step, r.attempt = r.int(HeaderStep), r.int(HeaderAttempt)
	r.compensation = r.bool(HeaderCompensation)
	if name == EmptyType {
		r.payloadType, r.payload, r.framed = "", []byte{}, nil
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errNotEnvelope, what, r.err)
	}
	return r, nil
}

// str returns a required header.
func (r *sagaRecord) str(name string) string {
	v, ok := r.md[name]
	if !ok && r.err == nil {
		r.err = fmt.Errorf("the %s header is missing", name)
	}
	return v
}

func (r *sagaRecord) int(name string) int {
	v := r.str(name)
	n, err := strconv.Atoi(v)
	if err != nil && r.err == nil {
		r.err = fmt.Errorf("the %s header %q is not a number", name, v)
	}
	return n
}

func (r *sagaRecord) bool(name string) bool {
	v := r.str(name)
	b, err := strconv.ParseBool(v)
	if err != nil && r.err == nil {
		r.err = fmt.Errorf("the %s header %q is not true or false", name, v)
	}
	return b
}

// decodeFramed decodes a payload record in the header format into v,
// resolving its writer schema (from the registry) against the reader's.
func decodeFramed(d *outbox.Decoder, typ string, framed []byte, v any) error {
	if typ == "" {
		return fmt.Errorf("saga: the message has no payload")
	}
	if _, err := d.Decode(framed, v); err != nil {
		return fmt.Errorf("saga: decode %s payload: %w", typ, err)
	}
	return nil
}
