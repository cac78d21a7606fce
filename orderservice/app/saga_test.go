package app_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/orderservice/app"
	"github.com/sagabox/sagabox/orderservice/domain"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/saga/sagatest"
	"github.com/sagabox/sagabox/schemas"
)

// The diagram in the README is the definition's own rendering, so it
// cannot drift from the code.
func TestReadmeShowsTheCurrentSaga(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := "\n```mermaid\n" + app.OrderSaga(nil).Mermaid() + "```\n"
	if !strings.Contains(string(readme), want) {
		t.Fatalf("orderservice/README.md does not show the current saga; paste:\n%s", want)
	}
}

// memOrders is the one part of the repository the saga uses (Update),
// in memory, so that the definition's decisions can be tested step by step
// with sagatest. adapters.Orders itself is tested on Postgres through the
// service tests.
type memOrders struct {
	app.Repository // the other methods are not used by the saga
	orders         map[uuid.UUID]domain.Order
	events         []domain.Status
}

func (m *memOrders) Update(_ context.Context, _ pgx.Tx, id uuid.UUID, fn func(*domain.Order) error) error {
	o, ok := m.orders[id]
	if !ok {
		return domain.ErrOrderNotFound
	}
	o.Items = slices.Clone(o.Items)
	before := o.Status
	if err := fn(&o); err != nil {
		return err
	}
	m.orders[id] = o
	if o.Status != before {
		m.events = append(m.events, o.Status)
	}
	return nil
}

// newSaga starts an order saga for 2 x TEA-1 and 1 x MUG-1.
func newSaga(t *testing.T) (*sagatest.Harness[app.SagaData], *memOrders, uuid.UUID) {
	t.Helper()
	o, err := domain.NewOrder(uuid.New(), []domain.Item{{SKU: "TEA-1", Quantity: 2}, {SKU: "MUG-1", Quantity: 1}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	repo := &memOrders{orders: map[uuid.UUID]domain.Order{o.ID: *o}}
	codec, err := outbox.NewCodec(append(saga.Schemas(), schemas.All()...)...)
	if err != nil {
		t.Fatal(err)
	}
	h := sagatest.New(t, app.OrderSaga(repo), codec, app.SagaData{OrderID: o.ID, UserID: o.UserID, Items: o.Items})
	h.Start()
	sent := h.ExpectCommands(schemas.CommandReserveStock)
	var p schemas.ReserveStock
	if err := sent[0].Decode(&p); err != nil || p.OrderID != o.ID.String() || len(p.Items) != 2 || sent[0].Topic != schemas.TopicCatalogCommands {
		t.Fatalf("reserve_stock: %+v %v", p, err)
	}
	return h, repo, o.ID
}

var reserved = &schemas.StockReserved{TotalCents: 2*450 + 900, Items: []schemas.PricedLine{
	{Sku: "MUG-1", Quantity: 1, UnitPriceCents: 900}, {Sku: "TEA-1", Quantity: 2, UnitPriceCents: 450}}}

func TestOrderSagaApprovesWithTheReservedPrices(t *testing.T) {
	t.Parallel()
	h, repo, id := newSaga(t)
	h.SucceedWith(schemas.NameStockReserved, reserved)
	sent := h.ExpectCommands(schemas.CommandDebitCredit)
	var d schemas.DebitCredit
	if err := sent[0].Decode(&d); err != nil || d.AmountCents != 1800 || d.OrderID != id.String() || sent[0].Topic != schemas.TopicUserCommands {
		t.Fatalf("debit_credit: %+v %v", d, err)
	}
	h.SucceedWith(schemas.NameCreditDebited, &schemas.CreditDebited{OrderID: id.String(), AmountCents: 1800})
	h.ExpectStatus(saga.StatusSucceeded)
	o := repo.orders[id]
	if o.Status != domain.StatusApproved || o.TotalCents != 1800 || o.Items[0].UnitPriceCents != 900 || len(repo.events) != 1 {
		t.Fatalf("order %+v, events %v", o, repo.events)
	}
}

func TestOrderSagaCancelsForInsufficientStockWithoutFurtherCommands(t *testing.T) {
	t.Parallel()
	h, repo, id := newSaga(t)
	h.Reject("insufficient stock for TEA-1")
	h.ExpectStatus(saga.StatusCompensated)
	h.ExpectCommands() // nothing was reserved: nothing to release
	if o := repo.orders[id]; o.Status != domain.StatusCancelled || o.Reason != domain.ReasonInsufficientStock {
		t.Fatalf("order %+v", o)
	}
	if got := strings.Join(h.Trace(), " "); got != "create_order#1:succeeded reserve_stock#1:rejected undo create_order#1:succeeded" {
		t.Fatalf("trace %s", got)
	}
}

func TestOrderSagaReleasesTheStockAndCancelsForInsufficientCredit(t *testing.T) {
	t.Parallel()
	h, repo, id := newSaga(t)
	h.SucceedWith(schemas.NameStockReserved, reserved)
	h.ExpectCommands(schemas.CommandDebitCredit)
	h.Reject("insufficient credit")
	sent := h.ExpectCommands(schemas.CommandReleaseStock)
	if o := repo.orders[id]; o.Status != domain.StatusPending {
		t.Fatalf("cancelled before the stock was released: %+v", o)
	}
	var r schemas.ReleaseStock
	if err := sent[0].Decode(&r); err != nil || r.OrderID != id.String() || !sent[0].Compensation {
		t.Fatalf("release_stock: %+v %v", r, err)
	}
	h.Succeed()
	h.ExpectStatus(saga.StatusCompensated)
	if o := repo.orders[id]; o.Status != domain.StatusCancelled || o.Reason != domain.ReasonInsufficientCredit || len(repo.events) != 1 {
		t.Fatalf("order %+v, events %v", o, repo.events)
	}
}

// A reservation that does not match the order (a bug, or an old catalog)
// must not be charged: the stock is released and the order cancelled.
func TestOrderSagaRefusesAReservationThatDoesNotMatchTheOrder(t *testing.T) {
	t.Parallel()
	h, repo, id := newSaga(t)
	h.SucceedWith(schemas.NameStockReserved, &schemas.StockReserved{TotalCents: 450, Items: []schemas.PricedLine{{Sku: "TEA-1", Quantity: 1, UnitPriceCents: 450}}})
	h.ExpectCommands(schemas.CommandReleaseStock)
	h.Succeed()
	h.ExpectStatus(saga.StatusCompensated)
	if o := repo.orders[id]; o.Status != domain.StatusCancelled || !strings.HasPrefix(o.Reason, "stock reservation failed: ") {
		t.Fatalf("order %+v", o)
	}
	if f := h.Failure(); f.StepName != app.StepReserveStock || f.Rejected() {
		t.Fatalf("failure %+v", f)
	}
}

// A reservation that timed out on every attempt is not a lack of stock: the
// order is cancelled for what happened, after releasing whatever a late
// reservation may hold.
func TestOrderSagaTimedOutReservationIsNotInsufficientStock(t *testing.T) {
	t.Parallel()
	h, repo, id := newSaga(t)
	h.Timeout()
	for attempt := 2; attempt <= saga.DefaultMaxAttempts; attempt++ {
		h.Wait(time.Minute) // the backoff
		h.ExpectCommands(schemas.CommandReserveStock)
		h.Timeout()
	}
	h.ExpectCommands(schemas.CommandReleaseStock)
	h.Succeed()
	h.ExpectStatus(saga.StatusCompensated)
	o := repo.orders[id]
	if o.Status != domain.StatusCancelled || o.Reason != "stock reservation timed out" {
		t.Fatalf("order %+v", o)
	}
	if f := h.Failure(); !f.TimedOut() || f.StepName != app.StepReserveStock || f.Attempts != saga.DefaultMaxAttempts {
		t.Fatalf("failure %+v", f)
	}
}

// Another "no" of the catalog is reported in its own words, not as a lack
// of stock.
func TestOrderSagaCancelsWithTheParticipantsOwnWords(t *testing.T) {
	t.Parallel()
	h, repo, id := newSaga(t)
	h.Reject("unknown SKU MUG-1")
	h.ExpectStatus(saga.StatusCompensated)
	if o := repo.orders[id]; o.Status != domain.StatusCancelled || o.Reason != "unknown SKU MUG-1" {
		t.Fatalf("order %+v", o)
	}
}

// When the debit's outcome stays unknown (no reply after every attempt),
// the saga neither approves nor compensates (the money may have been
// taken) nor gives up: it keeps asking userservice, whose inbox answers a
// debit it made with the reply it stored, and the order stays PENDING.
// When the answer comes, late, it is applied: the order is approved.
func TestOrderSagaKeepsAskingWhileTheDebitStaysUnknown(t *testing.T) {
	t.Parallel()
	h, repo, id := newSaga(t)
	h.SucceedWith(schemas.NameStockReserved, reserved)
	for attempt := 1; attempt <= saga.DefaultMaxAttempts+5; attempt++ {
		if c := h.ExpectCommands(schemas.CommandDebitCredit)[0]; c.Attempt != attempt {
			t.Fatalf("debit attempt %d, want %d", c.Attempt, attempt)
		}
		h.Timeout()
		h.ExpectStatus(saga.StatusRunning)
		h.ExpectCommands() // no release_stock
		if o := repo.orders[id]; o.Status != domain.StatusPending || len(repo.events) != 0 {
			t.Fatalf("order %+v, events %v", o, repo.events)
		}
		h.Wait(time.Minute)
	}
	h.ExpectCommands(schemas.CommandDebitCredit)
	h.Timeout() // backing off: the answer comes to an attempt no longer awaited
	h.SucceedWith(schemas.NameCreditDebited, &schemas.CreditDebited{OrderID: id.String(), AmountCents: 1800})
	h.ExpectStatus(saga.StatusSucceeded)
	if o := repo.orders[id]; o.Status != domain.StatusApproved || len(repo.events) != 1 {
		t.Fatalf("order %+v, events %v", o, repo.events)
	}
}

// Issue 11.4: the order carries the prices the customer saw, and a price
// raised before the reservation is never charged: the stock is released and
// the order cancelled with "price changed", with no debit sent.
func TestOrderSagaNeverChargesMoreThanTheOrderSaid(t *testing.T) {
	t.Parallel()
	o, err := domain.NewOrder(uuid.New(), []domain.Item{{SKU: "TEA-1", Quantity: 2}, {SKU: "MUG-1", Quantity: 1}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Price([]domain.Item{{SKU: "TEA-1", Quantity: 2, UnitPriceCents: 450}, {SKU: "MUG-1", Quantity: 1, UnitPriceCents: 300}}, 1200, time.Now()); err != nil {
		t.Fatal(err)
	}
	repo := &memOrders{orders: map[uuid.UUID]domain.Order{o.ID: *o}}
	codec, err := outbox.NewCodec(append(saga.Schemas(), schemas.All()...)...)
	if err != nil {
		t.Fatal(err)
	}
	h := sagatest.New(t, app.OrderSaga(repo), codec, app.SagaData{OrderID: o.ID, UserID: o.UserID, Items: o.Items})
	h.Start()
	h.ExpectCommands(schemas.CommandReserveStock)
	// MUG-1 went from 300 to 900 after the order was placed.
	h.SucceedWith(schemas.NameStockReserved, reserved)
	h.ExpectCommands(schemas.CommandReleaseStock) // no debit_credit
	h.Succeed()
	h.ExpectStatus(saga.StatusCompensated)
	if got := repo.orders[o.ID]; got.Status != domain.StatusCancelled || got.Reason != domain.ReasonPriceChanged || got.TotalCents != 1200 {
		t.Fatalf("order %+v", got)
	}
	if f := h.Failure(); !strings.Contains(f.Reason, "MUG-1 costs 900 cents now, the order was placed at 300") {
		t.Fatalf("failure %+v", f)
	}
}

// A price lowered before the reservation is charged as the order showed
// it: the order, its debit and the catalog's view (built from OrderCreated)
// tell the same story.
func TestOrderSagaChargesThePricesTheOrderShowed(t *testing.T) {
	t.Parallel()
	o, err := domain.NewOrder(uuid.New(), []domain.Item{{SKU: "TEA-1", Quantity: 2}, {SKU: "MUG-1", Quantity: 1}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Price([]domain.Item{{SKU: "TEA-1", Quantity: 2, UnitPriceCents: 500}, {SKU: "MUG-1", Quantity: 1, UnitPriceCents: 900}}, 1900, time.Now()); err != nil {
		t.Fatal(err)
	}
	repo := &memOrders{orders: map[uuid.UUID]domain.Order{o.ID: *o}}
	codec, err := outbox.NewCodec(append(saga.Schemas(), schemas.All()...)...)
	if err != nil {
		t.Fatal(err)
	}
	h := sagatest.New(t, app.OrderSaga(repo), codec, app.SagaData{OrderID: o.ID, UserID: o.UserID, Items: o.Items})
	h.Start()
	h.ExpectCommands(schemas.CommandReserveStock)
	h.SucceedWith(schemas.NameStockReserved, reserved) // TEA-1 at 450 now, not 500
	sent := h.ExpectCommands(schemas.CommandDebitCredit)
	var d schemas.DebitCredit
	if err := sent[0].Decode(&d); err != nil || d.AmountCents != 1900 {
		t.Fatalf("debit_credit: %+v %v, want the order's 1900", d, err)
	}
	h.SucceedWith(schemas.NameCreditDebited, &schemas.CreditDebited{OrderID: o.ID.String(), AmountCents: 1900})
	h.ExpectStatus(saga.StatusSucceeded)
	if got := repo.orders[o.ID]; got.Status != domain.StatusApproved || got.TotalCents != 1900 {
		t.Fatalf("order %+v", got)
	}
}
