package ports

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/catalogservice/app"
	"github.com/sagabox/sagabox/catalogservice/domain"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
)

// RegisterSagaHandlers makes p answer the order saga's stock commands
// (schemas.CommandReserveStock and CommandReleaseStock) with a.
//
// Two barriers protect each command: the saga participant's inbox (keyed by
// saga, step and phase, it stores the reply) and the stock_reservations
// table (keyed by order, it stores the stock taken). A rejection rolls back
// the handler's savepoint, reservation row included; the inbox keeps the
// REJECTED answer for the duplicates.
func RegisterSagaHandlers(p *saga.Participant, a *app.Application) {
	p.Handle(schemas.CommandReserveStock, ReserveStockHandler(a))
	p.Handle(schemas.CommandReleaseStock, ReleaseStockHandler(a))
}

// ReserveStockHandler answers ReserveStock with StockReserved (the prices
// the order is charged at), or rejects.
func ReserveStockHandler(a *app.Application) saga.HandlerFunc {
	return func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (*saga.Result, error) {
		var p schemas.ReserveStock
		if err := cmd.Decode(&p); err != nil {
			return nil, saga.Reject(fmt.Sprintf("reserve_stock payload: %v", err))
		}
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
		return &saga.Result{Type: schemas.NameStockReserved, Value: reply}, nil
	}
}

// ReleaseStockHandler gives back what ReserveStock took; it always succeeds
// unless the database fails.
func ReleaseStockHandler(a *app.Application) saga.HandlerFunc {
	return func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (*saga.Result, error) {
		var p schemas.ReleaseStock
		if err := cmd.Decode(&p); err != nil {
			return nil, saga.Reject(fmt.Sprintf("release_stock payload: %v", err))
		}
		if _, err := a.ReleaseStock(ctx, tx, p.OrderID); err != nil {
			return nil, err
		}
		return nil, nil
	}
}
