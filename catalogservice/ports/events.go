package ports

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/sagabox/sagabox/catalogservice/app"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
)

// Decoder turns a Confluent-framed Avro value into v (outbox.Decoder).
type Decoder interface {
	Decode(data []byte, v any) (string, error)
}

// OrderEventsHandler feeds the order read model from order.events. It runs
// inside the saga.Inbox middleware's transaction (a redelivered event is
// skipped before it gets here). Events of other types are skipped; an event
// that can never be decoded is logged and skipped (the view is a projection
// and can be rebuilt); a registry outage is returned, so the event comes
// again (PITFALLS.md 15).
func OrderEventsHandler(a *app.Application, dec Decoder, log *slog.Logger) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		ctx := msg.Context()
		tx, ok := saga.Tx(ctx)
		if !ok {
			return errors.New("catalogservice: order events handler must run inside saga.Inbox middleware")
		}
		var event any
		switch typ := msg.Metadata.Get(outbox.HeaderType); typ {
		case schemas.NameOrderCreated:
			event = &schemas.OrderCreated{}
		case schemas.NameOrderApproved:
			event = &schemas.OrderApproved{}
		case schemas.NameOrderCancelled:
			event = &schemas.OrderCancelled{}
		default:
			log.DebugContext(ctx, "catalogservice: skipping event of another type", "type", typ, "message_id", msg.UUID)
			return nil
		}
		if _, err := dec.Decode(msg.Payload, event); err != nil {
			if errors.Is(err, outbox.ErrRegistryUnavailable) {
				return err
			}
			log.ErrorContext(ctx, "catalogservice: skipping undecodable order event", "message_id", msg.UUID, "err", err)
			return nil
		}
		if err := a.ApplyOrderEvent(ctx, tx, event); err != nil {
			if errors.Is(err, app.ErrUnknownEvent) {
				log.WarnContext(ctx, "catalogservice: skipping order event", "message_id", msg.UUID, "err", err)
				return nil
			}
			return fmt.Errorf("apply order event %s: %w", msg.UUID, err)
		}
		return nil
	}
}
