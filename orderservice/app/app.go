// Package app holds orderservice's use cases: placing an order (which
// starts the order saga), reading one with its saga's progress, listing a
// user's orders; and the order saga itself (saga.go).
package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/orderservice/domain"
	"github.com/sagabox/sagabox/saga"
)

// ErrCatalogUnavailable means the catalog could not be asked whether it
// sells the order's SKUs; nothing was written and the client may retry.
var ErrCatalogUnavailable = errors.New("the catalog is unavailable")

// Repository is what the use cases need from storage (adapters.Orders).
type Repository interface {
	// Create stores o with its OrderCreated event and runs start in the same
	// transaction. When key is set and the user already has an order with
	// that key, it writes nothing and returns that order, its request
	// fingerprint and replayed true.
	Create(ctx context.Context, o *domain.Order, key, fingerprint string,
		start func(ctx context.Context, tx pgx.Tx) error) (stored *domain.Order, storedFingerprint string, replayed bool, err error)
	// ByIdempotencyKey returns the user's order made with key and its
	// request fingerprint, or domain.ErrOrderNotFound.
	ByIdempotencyKey(ctx context.Context, userID uuid.UUID, key string) (*domain.Order, string, error)
	Order(ctx context.Context, id uuid.UUID) (*domain.Order, error)
	OrdersOf(ctx context.Context, userID, before uuid.UUID, limit int) ([]domain.Order, error)
	// Update changes an order inside tx (the saga's) and writes the event
	// its status change calls for.
	Update(ctx context.Context, tx pgx.Tx, id uuid.UUID, fn func(*domain.Order) error) error
	// Saga returns the order's saga (it has the order's ID).
	Saga(ctx context.Context, orderID uuid.UUID) (*saga.Info, error)
	// PendingOrders counts the user's PENDING orders as tx sees them, after
	// taking a per-user lock held until tx ends, so that concurrent orders
	// of one user count each other.
	PendingOrders(ctx context.Context, tx pgx.Tx, userID uuid.UUID) (int, error)
}

// Catalog says what the catalog sells (adapters.Catalog): the list price
// of every SKU, a *domain.UnknownSKUError, or an error wrapping
// ErrCatalogUnavailable.
type Catalog interface {
	Prices(ctx context.Context, skus []string) (map[string]int64, error)
}

// SagaStarter starts an order saga inside the caller's transaction
// (*saga.Orchestrator[SagaData]).
type SagaStarter interface {
	Start(ctx context.Context, tx pgx.Tx, data SagaData, opts ...saga.StartOptions) (uuid.UUID, error)
}

// Application is orderservice's use cases.
type Application struct {
	repo    Repository
	catalog Catalog
	sagas   SagaStarter
	opts    Options
	now     func() time.Time
}

// DefaultMaxPendingOrders is Options.MaxPendingOrders' default.
const DefaultMaxPendingOrders = 10

// SagaWaiter waits for a saga to finish (*saga.Waiter: LISTEN/NOTIFY on
// the saga's terminal transition, no polling). See saga.Waiter.Wait.
type SagaWaiter interface {
	Wait(ctx context.Context, id uuid.UUID) (*saga.Info, error)
}

// Options are the use cases' limits and helpers.
type Options struct {
	// Waiter lets AwaitOrder wait for the order's saga. Nil: AwaitOrder
	// answers at once.
	Waiter SagaWaiter
	// MaxPendingOrders is how many PENDING orders one customer may have;
	// one more is refused with *domain.TooManyPendingError. Defaults to
	// DefaultMaxPendingOrders; negative: no cap.
	MaxPendingOrders int
}

// New returns the application. catalog may be nil: then SKUs are not
// checked when the order is placed, and an unknown SKU cancels the order
// through the saga (the catalog rejects the reservation).
func New(repo Repository, catalog Catalog, sagas SagaStarter, opts Options) *Application {
	if opts.MaxPendingOrders == 0 {
		opts.MaxPendingOrders = DefaultMaxPendingOrders
	}
	return &Application{repo: repo, catalog: catalog, sagas: sagas, opts: opts, now: now}
}

// now is the database's precision, so that what the API answers at once is
// what it answers later.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// PlaceOrder is a customer's order request.
type PlaceOrder struct {
	UserID uuid.UUID
	Items  []domain.Item
	// IdempotencyKey, when set, makes a retry of the same request return
	// the order the first one made.
	IdempotencyKey string
}

// PlaceOrder validates the request, checks the SKUs with the catalog, and
// stores the PENDING order, its OrderCreated event, the saga's state and its
// first command (reserve_stock) in one transaction. replayed is true when
// the Idempotency-Key had already made this order: nothing was written.
//
// Errors: *domain.ValidationError, *domain.UnknownSKUError,
// *domain.TooManyPendingError, domain.ErrIdempotencyKeyReused,
// ErrCatalogUnavailable.
func (a *Application) PlaceOrder(ctx context.Context, cmd PlaceOrder) (order *domain.Order, replayed bool, err error) {
	if cmd.IdempotencyKey != "" {
		if err := domain.ValidateIdempotencyKey(cmd.IdempotencyKey); err != nil {
			return nil, false, err
		}
	}
	o, err := domain.NewOrder(cmd.UserID, cmd.Items, a.now())
	if err != nil {
		return nil, false, err
	}
	fingerprint := domain.RequestFingerprint(o.UserID, o.Items)
	if cmd.IdempotencyKey != "" {
		// A retry is answered from the database, even while the catalog is
		// down. The race of two first attempts is settled in Create.
		stored, storedFP, err := a.repo.ByIdempotencyKey(ctx, o.UserID, cmd.IdempotencyKey)
		switch {
		case err == nil:
			return sameRequest(stored, storedFP, fingerprint)
		case !errors.Is(err, domain.ErrOrderNotFound):
			return nil, false, err
		}
	}
	if err := a.priceFromCatalog(ctx, o); err != nil {
		return nil, false, err
	}
	data := SagaData{OrderID: o.ID, UserID: o.UserID, Items: o.Items}
	stored, storedFP, replayed, err := a.repo.Create(ctx, o, cmd.IdempotencyKey, fingerprint, func(ctx context.Context, tx pgx.Tx) error {
		// The cap, counted after this order's INSERT and under the user's
		// lock: two orders placed at once cannot both be the last one.
		if max := a.opts.MaxPendingOrders; max > 0 {
			n, err := a.repo.PendingOrders(ctx, tx, o.UserID)
			if err != nil {
				return err
			}
			if n > max {
				return &domain.TooManyPendingError{Max: max}
			}
		}
		// The saga has the order's ID: one order, one saga, found by ID.
		_, err := a.sagas.Start(ctx, tx, data, saga.StartOptions{ID: o.ID})
		return err
	})
	if err != nil {
		return nil, false, err
	}
	if replayed {
		return sameRequest(stored, storedFP, fingerprint)
	}
	return stored, false, nil
}

func sameRequest(stored *domain.Order, storedFP, fingerprint string) (*domain.Order, bool, error) {
	if storedFP != fingerprint {
		return nil, false, domain.ErrIdempotencyKeyReused
	}
	return stored, true, nil
}

// priceFromCatalog checks that the catalog sells every SKU and prices the
// order at its list prices, which OrderCreated carries: the prices the
// customer is shown and the most the saga will charge. A reservation at a
// higher price (it rose meanwhile) cancels the order with "price changed";
// at a lower one the order takes it.
func (a *Application) priceFromCatalog(ctx context.Context, o *domain.Order) error {
	if a.catalog == nil {
		return nil
	}
	skus := make([]string, len(o.Items))
	for i, it := range o.Items {
		skus[i] = it.SKU
	}
	prices, err := a.catalog.Prices(ctx, skus)
	if err != nil {
		return err
	}
	priced := make([]domain.Item, len(o.Items))
	var total int64
	for i, it := range o.Items {
		priced[i] = domain.Item{SKU: it.SKU, Quantity: it.Quantity, UnitPriceCents: prices[it.SKU]}
		total += int64(it.Quantity) * prices[it.SKU]
	}
	if err := o.Price(priced, total, o.UpdatedAt); err != nil {
		return fmt.Errorf("%w: %v", ErrCatalogUnavailable, err)
	}
	return nil
}

// OrderDetails is an order with its saga's progress.
type OrderDetails struct {
	Order *domain.Order
	// Saga is nil once the finished saga was cleaned up (saga.Config
	// Retention).
	Saga *saga.Info
}

// Order returns the order for its owner; anyone else gets
// domain.ErrOrderNotFound, as for an order that does not exist.
func (a *Application) Order(ctx context.Context, viewer, id uuid.UUID) (*OrderDetails, error) {
	o, err := a.repo.Order(ctx, id)
	if err != nil {
		return nil, err
	}
	if !o.CanBeSeenBy(viewer) {
		return nil, domain.ErrOrderNotFound
	}
	info, err := a.repo.Saga(ctx, id)
	if errors.Is(err, saga.ErrNotFound) {
		info, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &OrderDetails{Order: o, Saga: info}, nil
}

// AwaitOrder is Order for a client that will wait (a long poll, `Prefer:
// wait`): while the order's status is still `from` and PENDING, it waits
// until the order's saga finishes or ctx ends, then answers the order as it
// is. Only the saga's end changes an order's status (PENDING to APPROVED or
// CANCELLED, in the transaction that finishes the saga), so waiting for it
// is waiting for the status to change, without polling the table. A
// decided order never changes again and is answered at once, as is one
// whose status is already other than `from`.
func (a *Application) AwaitOrder(ctx context.Context, viewer, id uuid.UUID, from domain.Status) (*OrderDetails, error) {
	d, err := a.Order(ctx, viewer, id)
	if err != nil || d.Order.Status != from || from != domain.StatusPending || a.opts.Waiter == nil {
		return d, err
	}
	return a.awaitSaga(ctx, viewer, id)
}

// AwaitPlaced is AwaitOrder for an order the caller has just placed and
// knows PENDING (o, as PlaceOrder returned it): it spares the first read.
func (a *Application) AwaitPlaced(ctx context.Context, o *domain.Order) (*OrderDetails, error) {
	if o.Status != domain.StatusPending || a.opts.Waiter == nil {
		return a.AwaitOrder(ctx, o.UserID, o.ID, o.Status)
	}
	return a.awaitSaga(ctx, o.UserID, o.ID)
}

func (a *Application) awaitSaga(ctx context.Context, viewer, id uuid.UUID) (*OrderDetails, error) {
	if _, err := a.opts.Waiter.Wait(ctx, id); err != nil && ctx.Err() == nil && !errors.Is(err, saga.ErrNotFound) {
		return nil, err
	}
	// ctx may be over (the client's wait): read the order as it is now on a
	// short context of our own.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	return a.Order(rctx, viewer, id)
}

// Orders lists the viewer's orders, newest first, limit at a time, older
// than the order `before` (uuid.Nil: the newest).
func (a *Application) Orders(ctx context.Context, viewer, before uuid.UUID, limit int) ([]domain.Order, error) {
	return a.repo.OrdersOf(ctx, viewer, before, limit)
}
