package ports

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
	"github.com/sagabox/sagabox/userservice/app"
)

// SagaHandlers answer the order saga's credit commands
// (schemas.CommandDebitCredit and CommandRefundCredit) with a.
//
// Two barriers protect each command: the saga participant's inbox (keyed by
// saga, step and phase, it stores the reply) and the credit_charges ledger
// (keyed by order, it stores the money moved). A rejection rolls back the
// handler's savepoint, ledger row included; the inbox keeps the REJECTED
// answer for the duplicates.
func SagaHandlers(a *app.Application) []saga.Handler {
	return []saga.Handler{
		// DebitCredit is answered with CreditDebited, or rejected.
		saga.HandleCommand(schemas.CommandDebitCredit,
			func(ctx context.Context, tx pgx.Tx, _ *saga.Command, p schemas.DebitCredit) (any, error) {
				out, err := a.DebitCredit(ctx, tx, p.OrderID, p.UserID, p.AmountCents)
				if err != nil {
					return nil, err // transient: retried with backoff
				}
				if !out.OK {
					return nil, saga.Reject(out.Reason)
				}
				return &schemas.CreditDebited{OrderID: p.OrderID, UserID: p.UserID, AmountCents: out.AmountCents,
					BalanceCents: out.BalanceCents}, nil
			}),
		// RefundCredit gives back what DebitCredit took; it succeeds
		// unless the database fails.
		saga.HandleCommand(schemas.CommandRefundCredit,
			func(ctx context.Context, tx pgx.Tx, _ *saga.Command, p schemas.RefundCredit) (any, error) {
				_, err := a.RefundCredit(ctx, tx, p.OrderID, p.UserID, p.AmountCents)
				return nil, err
			}),
	}
}
