package ports

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
	"github.com/sagabox/sagabox/userservice/app"
)

// RegisterSagaHandlers makes p answer the order saga's credit commands
// (schemas.CommandDebitCredit and CommandRefundCredit) with a.
//
// Two barriers protect each command: the saga participant's inbox (keyed by
// saga, step and phase, it stores the reply) and the credit_charges ledger
// (keyed by order, it stores the money moved). A rejection rolls back the
// handler's savepoint, ledger row included; the inbox keeps the REJECTED
// answer for the duplicates.
func RegisterSagaHandlers(p *saga.Participant, a *app.Application) {
	p.Handle(schemas.CommandDebitCredit, DebitCreditHandler(a))
	p.Handle(schemas.CommandRefundCredit, RefundCreditHandler(a))
}

// DebitCreditHandler answers DebitCredit with CreditDebited, or rejects.
func DebitCreditHandler(a *app.Application) saga.HandlerFunc {
	return func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (*saga.Result, error) {
		var p schemas.DebitCredit
		if err := cmd.Decode(&p); err != nil {
			return nil, saga.Reject(fmt.Sprintf("debit_credit payload: %v", err))
		}
		out, err := a.DebitCredit(ctx, tx, p.OrderID, p.UserID, p.AmountCents)
		if err != nil {
			return nil, err // transient: retried with backoff
		}
		if !out.OK {
			return nil, saga.Reject(out.Reason)
		}
		return &saga.Result{Type: schemas.NameCreditDebited, Value: &schemas.CreditDebited{
			OrderID: p.OrderID, UserID: p.UserID, AmountCents: out.AmountCents, BalanceCents: out.BalanceCents}}, nil
	}
}

// RefundCreditHandler gives back what DebitCredit took; it always succeeds
// unless the database fails.
func RefundCreditHandler(a *app.Application) saga.HandlerFunc {
	return func(ctx context.Context, tx pgx.Tx, cmd *saga.Command) (*saga.Result, error) {
		var p schemas.RefundCredit
		if err := cmd.Decode(&p); err != nil {
			return nil, saga.Reject(fmt.Sprintf("refund_credit payload: %v", err))
		}
		if _, err := a.RefundCredit(ctx, tx, p.OrderID, p.UserID, p.AmountCents); err != nil {
			return nil, err
		}
		return nil, nil
	}
}
