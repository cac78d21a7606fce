package messaging

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/sagabox/sagabox/internal/wmlog"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// Consumer consumes one topic in a consumer group with watermill, each
// message handled inside the saga.Inbox transaction (so a redelivered
// message is skipped and the handler's writes commit with the inbox row).
type Consumer struct {
	// Name identifies the consumer in the inbox and the logs. Required.
	Name string
	// Brokers, Topic and Group say what to consume. Required.
	Brokers []string
	Topic   string
	Group   string
	// Inbox deduplicates; build it with saga.NewInbox(pool, Name). Required.
	Inbox *saga.Inbox
	// Handler does the work in saga.Tx(msg.Context()). Required. An error
	// makes the message be delivered again after a pause.
	Handler message.NoPublishHandlerFunc
	// Logger defaults to a logger that discards everything.
	Logger *slog.Logger
}

// Run consumes until ctx is done, then closes the router, which waits for
// the message in flight.
func (c Consumer) Run(ctx context.Context) error {
	if c.Name == "" || len(c.Brokers) == 0 || c.Topic == "" || c.Group == "" || c.Inbox == nil || c.Handler == nil {
		return errors.New("messaging: Consumer needs Name, Brokers, Topic, Group, Inbox and Handler")
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wlog := wmlog.New(log)
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Brokers:               c.Brokers,
		Unmarshaler:           outbox.KafkaUnmarshaler{},
		OverwriteSaramaConfig: saga.SaramaConfig(),
		ConsumerGroup:         c.Group,
		NackResendSleep:       500 * time.Millisecond,
		ReconnectRetrySleep:   200 * time.Millisecond,
	}, wlog)
	if err != nil {
		return fmt.Errorf("messaging: %s: subscriber: %w", c.Name, err)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, wlog)
	if err != nil {
		return fmt.Errorf("messaging: %s: router: %w", c.Name, err)
	}
	h := router.AddConsumerHandler(c.Name, c.Topic, sub, c.Handler)
	h.AddMiddleware(c.Inbox.Middleware)
	done := make(chan error, 1)
	go func() { done <- router.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-ctx.Done():
	case err := <-done:
		if err != nil {
			return fmt.Errorf("messaging: %s: router: %w", c.Name, err)
		}
		return fmt.Errorf("messaging: %s: router stopped", c.Name)
	}
	closeErr := router.Close()
	if err := <-done; err != nil {
		return fmt.Errorf("messaging: %s: router: %w", c.Name, err)
	}
	return closeErr
}
