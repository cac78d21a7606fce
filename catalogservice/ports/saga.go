package ports

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/catalogservice/app"
	"github.com/sagabox/sagabox/catalogservice/domain"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
)

// SagaHandlers answer the order saga's stock commands
// (schemas.CommandReserveStock and CommandReleaseStock) with a.
//
// Two barriers protect each command: the saga participant's inbox (keyed by
// saga, step and phase, it stores the reply) and the stock_reservations
// table (keyed by order, it stores the stock taken). A rejection rolls back
// the handler's savepoint, reservation row included; the inbox keeps the
// REJECTED answer for the duplicates.
func SagaHandlers(a *app.Application) []saga.Handler {
	return []saga.Handler{
		// ReserveStock is answered with StockReserved (the prices the
		// order is charged at), or rejected.
		saga.HandleCommand(schemas.CommandReserveStock,
			func(ctx context.Context, tx pgx.Tx, _ *saga.Command, p schemas.ReserveStock) (any, error) {
				lines := make([]domain.Line, len(p.Items))
				for i, it := range p.Items {
					lines[i] = domain.Line{SKU: it.Sku, Quantity: it.Quantity}
				}
				out, err := a.ReserveStock(ctx, tx, p.OrderID, lines)
				if err != nil {
					return nil, err // transient: retried with backoff
				}
				if !out.OK {
					return nil, saga.Reject(out.Reason)
				}
				reply := &schemas.StockReserved{OrderID: p.OrderID, TotalCents: out.TotalCents, Items: make([]schemas.PricedLine, len(out.Lines))}
				for i, l := range out.Lines {
					reply.Items[i] = schemas.PricedLine{Sku: l.SKU, Quantity: l.Quantity, UnitPriceCents: l.UnitPriceCents}
				}
				return reply, nil
			}),
		// ReleaseStock gives back what ReserveStock took; it succeeds
		// unless the database fails.
		saga.HandleCommand(schemas.CommandReleaseStock,
			func(ctx context.Context, tx pgx.Tx, _ *saga.Command, p schemas.ReleaseStock) (any, error) {
				_, err := a.ReleaseStock(ctx, tx, p.OrderID)
				return nil, err
			}),
	}
}
