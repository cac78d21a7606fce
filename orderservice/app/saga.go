package app

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/orderservice/domain"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
)

// The order saga's name (stored with each instance, labels the metrics) and
// the version of its definition. Change the version with the steps.
const (
	SagaName    = "order"
	SagaVersion = 1
)

// Step names, as they appear in the saga's history.
const (
	StepCreateOrder  = "create_order"
	StepReserveStock = schemas.CommandReserveStock
	StepDebitCredit  = schemas.CommandDebitCredit
	StepApproveOrder = "approve_order"
)

// SagaData is the order saga's data, stored as JSON with the saga.
type SagaData struct {
	OrderID uuid.UUID `json:"order_id"`
	UserID  uuid.UUID `json:"user_id"`
	// Items are the order's lines, with the prices the customer was shown,
	// which are what the saga charges (domain.Order.Charge); a line placed
	// without a price takes the reservation's.
	Items      []domain.Item `json:"items"`
	TotalCents int64         `json:"total_cents"`
	// StockReserved is set by reserve_stock's reply. Only sagas that
	// started compensating before saga.FailureFrom existed use it, to guess
	// which step said no.
	StockReserved bool `json:"stock_reserved"`
}

// cancelReason says why the saga cancels the order, from the failure that
// made it compensate (saga.FailureFrom): "insufficient stock" or
// "insufficient credit" when the participant said no for that reason, and
// otherwise what did happen: the participant's own words for another "no"
// ("unknown SKU X"), "stock reservation timed out", "stock reservation
// failed: ..." for errors or a reservation that does not match the order.
// The participant's exact words are also in the saga's step history, which
// GET /orders/{id} shows next to the reason.
func cancelReason(ctx context.Context, d *SagaData) string {
	f, ok := saga.FailureFrom(ctx)
	if !ok {
		// A saga that started compensating before the failure was
		// recorded with it (saga migration 002): fall back to the data.
		if !d.StockReserved {
			return domain.ReasonInsufficientStock
		}
		return domain.ReasonInsufficientCredit
	}
	what := f.StepName
	switch f.StepName {
	case StepReserveStock:
		what = "stock reservation"
	case StepDebitCredit:
		what = "credit debit"
	}
	switch {
	case f.Rejected() && f.StepName == StepReserveStock && strings.HasPrefix(f.Reason, domain.ReasonInsufficientStock):
		return domain.ReasonInsufficientStock
	case f.Rejected() && f.StepName == StepDebitCredit && strings.HasPrefix(f.Reason, domain.ReasonInsufficientCredit):
		return domain.ReasonInsufficientCredit
	case f.StepName == StepReserveStock && strings.HasPrefix(f.Reason, domain.ReasonPriceChanged):
		return domain.ReasonPriceChanged
	case f.Rejected():
		return f.Reason
	case f.TimedOut():
		return what + " timed out"
	case f.Outcome == saga.OutcomeAborted:
		return "aborted: " + f.Reason
	}
	return what + " failed: " + f.Reason
}

// SagaTuning sets the timeouts and retries of the order saga's two
// commands, reserve_stock and debit_credit (orderservice's
// SAGA_STEP_TIMEOUT, SAGA_STEP_ATTEMPTS, SAGA_STEP_MAX_BACKOFF). Zero
// fields keep the saga package's defaults (saga.DefaultTimeout,
// saga.DefaultMaxAttempts...).
type SagaTuning struct {
	// Timeout is how long one attempt of a command, or of release_stock,
	// waits for its reply. Defaults to saga.DefaultTimeout.
	Timeout time.Duration
	// Retry bounds the attempts of each command and their backoff.
	Retry saga.RetryPolicy
}

// OrderSaga is OrderSagaWith(repo, SagaTuning{}): the saga package's
// default timeouts and retries.
func OrderSaga(repo Repository) *saga.Definition[SagaData] {
	return OrderSagaWith(repo, SagaTuning{})
}

// OrderSagaWith is the order saga on repo, its commands timed as tn says:
//
//  1. create_order (local, compensatable): the order was stored PENDING in
//     the transaction that started the saga; the step exists for its
//     compensation, which cancels the order with the reason and writes
//     OrderCancelled.
//  2. reserve_stock on catalog.commands (compensatable): the catalog takes
//     every line or none and answers with the prices; one above the price
//     the order showed fails the step ("price changed"). Compensation:
//     release_stock.
//  3. debit_credit on user.commands (the pivot): once the money is taken
//     the order can only go forward. A "no" compensates steps 2 and 1.
//  4. approve_order (local, retriable): the order becomes APPROVED at the
//     prices it showed (domain.Order.Charge), with OrderApproved.
//
// Every local step runs in the orchestrator's transaction, with the saga's
// state change and the commands it sends.
func OrderSagaWith(repo Repository, tn SagaTuning) *saga.Definition[SagaData] {
	return saga.MustDefinition(SagaName, SagaVersion,
		saga.Step[SagaData]{
			Name:  StepCreateOrder,
			Local: func(context.Context, pgx.Tx, *SagaData) error { return nil },
			CompensateLocal: func(ctx context.Context, tx pgx.Tx, d *SagaData) error {
				reason := cancelReason(ctx, d)
				return repo.Update(ctx, tx, d.OrderID, func(o *domain.Order) error {
					return o.Cancel(reason, now())
				})
			},
		},
		saga.Step[SagaData]{
			Name:    StepReserveStock,
			Timeout: tn.Timeout, Retry: tn.Retry,
			Invoke: &saga.Invocation[SagaData]{
				Topic: schemas.TopicCatalogCommands, Command: schemas.CommandReserveStock, Type: schemas.NameReserveStock,
				Payload: func(d *SagaData) (any, error) {
					p := &schemas.ReserveStock{OrderID: d.OrderID.String(), Items: make([]schemas.StockLine, len(d.Items))}
					for i, it := range d.Items {
						p.Items[i] = schemas.StockLine{Sku: it.SKU, Quantity: it.Quantity}
					}
					return p, nil
				},
				OnReply: func(d *SagaData, r *saga.Reply) error {
					var res schemas.StockReserved
					if err := r.Decode(&res); err != nil {
						return err
					}
					priced := make([]domain.Item, len(res.Items))
					for i, l := range res.Items {
						priced[i] = domain.Item{SKU: l.Sku, Quantity: l.Quantity, UnitPriceCents: l.UnitPriceCents}
					}
					// Check the reservation against the order with the
					// domain's rules: a mismatch, or a price above the one
					// the customer saw (Charge), fails the step, which
					// releases the stock and cancels the order ("price
					// changed"). The order is charged the prices it showed,
					// never others.
					check := &domain.Order{Status: domain.StatusPending, Items: slices.Clone(d.Items)}
					if err := check.Price(priced, res.TotalCents, now()); err != nil {
						return err
					}
					charged, total, err := (&domain.Order{Items: d.Items}).Charge(priced)
					if err != nil {
						return err
					}
					check = &domain.Order{Status: domain.StatusPending, Items: slices.Clone(d.Items)}
					if err := check.Price(charged, total, now()); err != nil {
						return err
					}
					d.Items, d.TotalCents, d.StockReserved = check.Items, total, true
					return nil
				},
			},
			Compensate: &saga.Invocation[SagaData]{
				Topic: schemas.TopicCatalogCommands, Command: schemas.CommandReleaseStock, Type: schemas.NameReleaseStock,
				Payload: func(d *SagaData) (any, error) {
					return &schemas.ReleaseStock{OrderID: d.OrderID.String()}, nil
				},
			},
		},
		saga.Step[SagaData]{
			Name:    StepDebitCredit,
			Kind:    saga.Pivot,
			Timeout: tn.Timeout, Retry: tn.Retry,
			Invoke: &saga.Invocation[SagaData]{
				Topic: schemas.TopicUserCommands, Command: schemas.CommandDebitCredit, Type: schemas.NameDebitCredit,
				Payload: func(d *SagaData) (any, error) {
					return &schemas.DebitCredit{OrderID: d.OrderID.String(), UserID: d.UserID.String(), AmountCents: d.TotalCents}, nil
				},
			},
		},
		saga.Step[SagaData]{
			Name: StepApproveOrder,
			Kind: saga.Retriable,
			Local: func(ctx context.Context, tx pgx.Tx, d *SagaData) error {
				return repo.Update(ctx, tx, d.OrderID, func(o *domain.Order) error {
					if o.Status == domain.StatusApproved {
						return nil
					}
					at := now()
					if err := o.Price(d.Items, d.TotalCents, at); err != nil {
						return err
					}
					return o.Approve(at)
				})
			},
		},
	)
}
