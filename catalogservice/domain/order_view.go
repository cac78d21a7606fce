package domain

import "time"

// OrderStatus is an order's status as the catalog last heard it.
type OrderStatus string

const (
	OrderUnknown   OrderStatus = ""
	OrderPending   OrderStatus = "PENDING"
	OrderApproved  OrderStatus = "APPROVED"
	OrderCancelled OrderStatus = "CANCELLED"
)

// rank orders the statuses: an event never moves an order back. APPROVED and
// CANCELLED are final and the first one heard wins.
func (s OrderStatus) rank() int {
	switch s {
	case OrderPending:
		return 1
	case OrderApproved, OrderCancelled:
		return 2
	}
	return 0
}

// ViewItem is one line of an order in the catalog's view: with the product's
// name, which the order events do not carry. Its JSON is how order_views.items
// stores it, not the API's (ports copies it into camelCase).
type ViewItem struct {
	SKU            string `json:"sku"`
	Name           string `json:"name"`
	Quantity       int    `json:"quantity"`
	UnitPriceCents int64  `json:"unit_price_cents"`
}

// OrderView is the catalog's read model of an order (CQRS): built only from
// order events, never by asking the order service.
type OrderView struct {
	OrderID    string
	UserID     string
	Items      []ViewItem
	TotalCents int64
	Status     OrderStatus
	Reason     string
	UpdatedAt  time.Time
	// Version is how many of the order's events the view has applied; the
	// order service numbers an order's versions the same way.
	Version int
}

// OrderEvent is an order event reduced to what the view needs.
type OrderEvent struct {
	OrderID    string
	UserID     string
	Status     OrderStatus // PENDING for OrderCreated
	Items      []ViewItem  // OrderCreated only; names filled in by the caller
	TotalCents int64
	Reason     string
	OccurredAt time.Time
}

// Apply folds e into v. It is idempotent (an event applied twice changes
// nothing the second time) and tolerates events out of order: a status
// never goes back (OrderCreated after OrderApproved keeps APPROVED but fills
// in the items), and the first final status wins. It reports whether v
// changed.
func (v *OrderView) Apply(e OrderEvent) bool {
	changed := false
	if v.UserID == "" && e.UserID != "" {
		v.UserID, changed = e.UserID, true
	}
	if len(v.Items) == 0 && len(e.Items) > 0 {
		v.Items, changed = e.Items, true
	}
	if e.TotalCents > 0 && (v.TotalCents == 0 || e.Status == OrderApproved) && v.TotalCents != e.TotalCents {
		v.TotalCents, changed = e.TotalCents, true
	}
	if e.Status.rank() > v.Status.rank() {
		v.Status, v.Reason, changed = e.Status, e.Reason, true
	}
	if changed && e.OccurredAt.After(v.UpdatedAt) {
		v.UpdatedAt = e.OccurredAt
	}
	return changed
}
