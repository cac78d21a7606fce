// Package app holds catalogservice's use cases: managing products, the
// stock commands of the order saga, and the order read model.
package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/catalogservice/domain"
	"github.com/sagabox/sagabox/schemas"
)

// ErrUnknownEvent is returned by ApplyOrderEvent for a value that is not an
// order event; a consumer should skip it.
var ErrUnknownEvent = errors.New("not an order event")

// Repository is what the use cases need from storage (adapters.Catalog).
type Repository interface {
	AddProduct(ctx context.Context, p *domain.Product) error
	Product(ctx context.Context, sku string) (*domain.Product, error)
	Products(ctx context.Context, after string, limit int) ([]domain.Product, error)
	LockReservation(ctx context.Context, tx pgx.Tx, orderID string) (*domain.Reservation, error)
	SaveReservation(ctx context.Context, tx pgx.Tx, r *domain.Reservation) error
	TakeStock(ctx context.Context, tx pgx.Tx, lines []domain.Line) ([]domain.Line, *domain.Shortage, error)
	ReturnStock(ctx context.Context, tx pgx.Tx, lines []domain.Line) error
	ProductNames(ctx context.Context, tx pgx.Tx, skus []string) (map[string]string, error)
	UpdateOrderView(ctx context.Context, tx pgx.Tx, orderID string, fn func(*domain.OrderView) (bool, error)) error
	OrderView(ctx context.Context, orderID string) (*domain.OrderView, error)
}

// Application is catalogservice's use cases.
type Application struct {
	repo  Repository
	now   func() time.Time
	views viewSignal
}

// New returns the application.
func New(repo Repository) *Application {
	return &Application{repo: repo, now: time.Now, views: viewSignal{waiters: map[string]map[chan struct{}]struct{}{}}}
}

// viewSignal wakes the requests waiting for an order's view
// (AwaitOrderView) when this process's consumer has committed an event of
// that order: an in-process signal, no polling and no NOTIFY on the event
// path. A request served by an instance whose consumer does not own the
// order's partition is not woken and answers what it has when its wait
// ends, with the version, so the client can ask again.
type viewSignal struct {
	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
}

func (s *viewSignal) add(orderID string) chan struct{} {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiters[orderID] == nil {
		s.waiters[orderID] = map[chan struct{}]struct{}{}
	}
	s.waiters[orderID][ch] = struct{}{}
	return ch
}

func (s *viewSignal) remove(orderID string, ch chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.waiters[orderID], ch)
	if len(s.waiters[orderID]) == 0 {
		delete(s.waiters, orderID)
	}
}

// OrderViewCommitted wakes the requests waiting for the view of orderID:
// call it after the transaction that applied one of its events committed
// (saga.ConsumerConfig.AfterCommit).
func (a *Application) OrderViewCommitted(orderID string) {
	a.views.mu.Lock()
	defer a.views.mu.Unlock()
	for ch := range a.views.waiters[orderID] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// OrderViewWaiters is how many requests wait for the view of orderID (for
// tests and metrics).
func (a *Application) OrderViewWaiters(orderID string) int {
	a.views.mu.Lock()
	defer a.views.mu.Unlock()
	return len(a.views.waiters[orderID])
}

// AwaitOrderView is OrderView for a client that has seen version
// minVersion of the order (from the order service) and must not read an
// older state: it waits until the view has applied at least that many of
// the order's events, for at most wait, then answers the view as it is (ok
// false when it is still older; domain.ErrOrderNotFound if there is none
// yet).
func (a *Application) AwaitOrderView(ctx context.Context, viewerID string, admin bool, orderID string, minVersion int, wait time.Duration) (v *domain.OrderView, ok bool, err error) {
	ch := a.views.add(orderID) // before the first read: no commit can slip between
	defer a.views.remove(orderID, ch)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		v, err = a.OrderView(ctx, viewerID, admin, orderID)
		switch {
		case err == nil && v.Version >= minVersion:
			return v, true, nil
		case err != nil && !errors.Is(err, domain.ErrOrderNotFound):
			return nil, false, err
		}
		select {
		case <-ch:
		case <-timer.C:
			return v, false, err
		case <-ctx.Done():
			return v, false, err
		}
	}
}

// AddProduct creates a product. Errors: *domain.ValidationError,
// domain.ErrSKUTaken.
func (a *Application) AddProduct(ctx context.Context, sku, name string, priceCents int64, stock int) (*domain.Product, error) {
	p, err := domain.NewProduct(sku, name, priceCents, stock, a.now().UTC().Truncate(time.Microsecond))
	if err != nil {
		return nil, err
	}
	if err := a.repo.AddProduct(ctx, p); err != nil {
		return nil, err
	}
	return p, nil
}

// Product returns one product; an invalid SKU is domain.ErrProductNotFound.
func (a *Application) Product(ctx context.Context, sku string) (*domain.Product, error) {
	norm, err := domain.NormalizeSKU(sku)
	if err != nil {
		return nil, domain.ErrProductNotFound
	}
	return a.repo.Product(ctx, norm)
}

// Products lists products by SKU, limit at a time, after the given SKU.
func (a *Application) Products(ctx context.Context, after string, limit int) ([]domain.Product, error) {
	return a.repo.Products(ctx, after, limit)
}

// ReserveStock takes the stock of every line of the order, or of none, inside
// tx, once per order (see domain.ReservationStatus). A refusal (unknown SKU,
// insufficient stock, bad quantity, compensated order) is an Outcome with OK
// false, recorded in tx: commit tx either way. An error means nothing
// happened and the command may be retried.
func (a *Application) ReserveStock(ctx context.Context, tx pgx.Tx, orderID string, items []domain.Line) (domain.Outcome, error) {
	if orderID == "" {
		return domain.Outcome{}, errors.New("reserve stock: order ID is required")
	}
	r, err := a.repo.LockReservation(ctx, tx, orderID)
	if err != nil {
		return domain.Outcome{}, err
	}
	if out, decided := r.Decided(); decided {
		return out, nil // a duplicate gets the first answer
	}
	var out domain.Outcome
	lines, err := domain.NormalizeLines(items)
	if err != nil {
		out = r.Rejected(err.Error())
	} else {
		priced, shortage, err := a.repo.TakeStock(ctx, tx, lines)
		if err != nil {
			return domain.Outcome{}, err
		}
		if shortage != nil {
			out = r.Rejected(shortage.Reason())
		} else {
			out = r.Reserved(priced)
		}
	}
	if err := a.repo.SaveReservation(ctx, tx, r); err != nil {
		return domain.Outcome{}, err
	}
	return out, nil
}

// ReleaseStock gives back exactly what ReserveStock took for the order,
// inside tx, once. A release without a reservation does nothing but is
// remembered, so a reservation arriving after it does nothing either.
func (a *Application) ReleaseStock(ctx context.Context, tx pgx.Tx, orderID string) (domain.Outcome, error) {
	if orderID == "" {
		return domain.Outcome{}, errors.New("release stock: order ID is required")
	}
	r, err := a.repo.LockReservation(ctx, tx, orderID)
	if err != nil {
		return domain.Outcome{}, err
	}
	giveBack, out := r.Release()
	if err := a.repo.ReturnStock(ctx, tx, giveBack); err != nil {
		return domain.Outcome{}, err
	}
	if out.Changed {
		if err := a.repo.SaveReservation(ctx, tx, r); err != nil {
			return domain.Outcome{}, err
		}
	}
	return out, nil
}

// ApplyOrderEvent folds an order event (schemas.OrderCreated, OrderApproved
// or OrderCancelled, as value or pointer) into the catalog's view of the
// order, inside tx (the consumer's, with its inbox row). Duplicates and
// stale events change nothing. Anything else is ErrUnknownEvent.
func (a *Application) ApplyOrderEvent(ctx context.Context, tx pgx.Tx, event any) error {
	e, err := toDomainEvent(event)
	if err != nil {
		return err
	}
	if e.OrderID == "" {
		return fmt.Errorf("%w: no order ID", ErrUnknownEvent)
	}
	if len(e.Items) > 0 {
		skus := make([]string, len(e.Items))
		for i, it := range e.Items {
			skus[i] = it.SKU
		}
		names, err := a.repo.ProductNames(ctx, tx, skus)
		if err != nil {
			return err
		}
		for i := range e.Items {
			e.Items[i].Name = names[e.Items[i].SKU]
		}
	}
	return a.repo.UpdateOrderView(ctx, tx, e.OrderID, func(v *domain.OrderView) (bool, error) {
		return v.Apply(e), nil
	})
}

func toDomainEvent(event any) (domain.OrderEvent, error) {
	switch ev := event.(type) {
	case schemas.OrderCreated:
		return toDomainEvent(&ev)
	case schemas.OrderApproved:
		return toDomainEvent(&ev)
	case schemas.OrderCancelled:
		return toDomainEvent(&ev)
	case *schemas.OrderCreated:
		items := make([]domain.ViewItem, len(ev.Items))
		for i, l := range ev.Items {
			sku, err := domain.NormalizeSKU(l.Sku)
			if err != nil {
				sku = l.Sku
			}
			items[i] = domain.ViewItem{SKU: sku, Quantity: l.Quantity, UnitPriceCents: l.UnitPriceCents}
		}
		return domain.OrderEvent{OrderID: ev.OrderID, UserID: ev.UserID, Status: domain.OrderPending, Items: items,
			TotalCents: ev.TotalCents, OccurredAt: ev.OccurredAt}, nil
	case *schemas.OrderApproved:
		return domain.OrderEvent{OrderID: ev.OrderID, UserID: ev.UserID, Status: domain.OrderApproved,
			TotalCents: ev.TotalCents, OccurredAt: ev.OccurredAt}, nil
	case *schemas.OrderCancelled:
		return domain.OrderEvent{OrderID: ev.OrderID, UserID: ev.UserID, Status: domain.OrderCancelled,
			Reason: ev.Reason, OccurredAt: ev.OccurredAt}, nil
	}
	return domain.OrderEvent{}, fmt.Errorf("%w: %T", ErrUnknownEvent, event)
}

// OrderView returns the catalog's view of an order for the viewer: the
// order's user or an admin. Anyone else gets domain.ErrOrderNotFound.
func (a *Application) OrderView(ctx context.Context, viewerID string, admin bool, orderID string) (*domain.OrderView, error) {
	v, err := a.repo.OrderView(ctx, orderID)
	if err != nil {
		return nil, err
	}
	if !admin && v.UserID != viewerID {
		return nil, domain.ErrOrderNotFound
	}
	return v, nil
}
