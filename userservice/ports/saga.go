package ports

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
	"github.com/sagabox/sagabox/userservice/app"
)

// DebitFault decides whether a debit fails before it runs: for failure
// drills and the demo (a payment processor that is down). nil: never.
type DebitFault func(ctx context.Context, orderID, userID string, amountCents int64) error

// SagaHandlers answer the order saga's credit commands
// (schemas.CommandDebitCredit and CommandRefundCredit) with a.
//
// Two barriers protect each command: the saga participant's inbox (keyed by
// saga, step and phase, it stores the reply) and the credit_charges ledger
// (keyed by order, it stores the money moved). A rejection rolls back the
// handler's savepoint, ledger row included; the inbox keeps the REJECTED
// answer for the duplicates.
//
// debitFault, when not nil, is asked before each debit: an error it returns
// is answered as a transient failure, nothing debited (see
// userservice.Config.DebitFault).
func SagaHandlers(a *app.Application, debitFault DebitFault) []saga.Handler {
	return []saga.Handler{
		// DebitCredit is answered with CreditDebited, or rejected.
		saga.HandleCommand(schemas.CommandDebitCredit,
			func(ctx context.Context, tx pgx.Tx, _ *saga.Command, p schemas.DebitCredit) (any, error) {
				if debitFault != nil {
					if err := debitFault(ctx, p.OrderID, p.UserID, p.AmountCents); err != nil {
						return nil, err // transient: retried with backoff
					}
				}
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
