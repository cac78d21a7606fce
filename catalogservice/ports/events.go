package ports

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/catalogservice/app"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
)

// OrderEventsHandler feeds the order read model from order.events. It runs
// in the saga.Consumer's transaction, which also records the event in the
// inbox (a redelivered event is skipped before it gets here). Events of
// other types are skipped; an event that can never be decoded is logged and
// skipped (the view is a projection and can be rebuilt); a registry outage
// is returned, so the event comes again (PITFALLS.md 15).
func OrderEventsHandler(a *app.Application, log *slog.Logger) saga.EventHandler {
	return func(ctx context.Context, tx pgx.Tx, e *saga.Event) error {
		var event any
		switch e.Type {
		case schemas.NameOrderCreated:
			event = &schemas.OrderCreated{}
		case schemas.NameOrderApproved:
			event = &schemas.OrderApproved{}
		case schemas.NameOrderCancelled:
			event = &schemas.OrderCancelled{}
		default:
			log.DebugContext(ctx, "catalogservice: skipping event of another type", "type", e.Type, "message_id", e.ID)
			return nil
		}
		if err := e.Decode(event); err != nil {
			if errors.Is(err, outbox.ErrRegistryUnavailable) {
				return err
			}
			log.ErrorContext(ctx, "catalogservice: skipping undecodable order event", "message_id", e.ID, "err", err)
			return nil
		}
		if err := a.ApplyOrderEvent(ctx, tx, event); err != nil {
			if errors.Is(err, app.ErrUnknownEvent) {
				log.WarnContext(ctx, "catalogservice: skipping order event", "message_id", e.ID, "err", err)
				return nil
			}
			return fmt.Errorf("apply order event %s: %w", e.ID, err)
		}
		return nil
	}
}
