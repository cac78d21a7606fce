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
	"github.com/sagabox/sagabox/internal/tracing"
	"github.com/sagabox/sagabox/internal/wmlog"
	"github.com/sagabox/sagabox/outbox"
)

// SaramaConfig returns the consumer configuration the saga consumers use
// unless overridden: the watermill-kafka defaults, starting from the oldest
// offset when a consumer group has none (a reply written before the group
// first joined must not be skipped).
func SaramaConfig() *sarama.Config {
	c := kafka.DefaultSaramaSubscriberConfig()
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
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
