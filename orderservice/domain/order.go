// Package domain holds orderservice's rules: what a valid order is, the
// states it moves through while its saga runs, and who may see it. It does
// no I/O.
//
//	            stock reserved, credit debited
//	PENDING ─────────────────────────────────► APPROVED
//	   │
//	   │ stock or credit refused (after compensation)
//	   └─────────────────────────────────────► CANCELLED
package domain

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Bounds of an order: a quantity is 1..MaxQuantity, an order has
// 1..MaxLines lines. The catalog applies the same bounds.
const (
	MaxQuantity          = 1000
	MaxLines             = 100
	MaxIdempotencyKeyLen = 255
)

// Status is where an order stands.
type Status string

const (
	StatusPending   Status = "PENDING"
	StatusApproved  Status = "APPROVED"
	StatusCancelled Status = "CANCELLED"
)

// Final reports whether no event can change the status any more.
func (s Status) Final() bool { return s == StatusApproved || s == StatusCancelled }

// Why an order is cancelled: the business "no" of the step that failed. The
// participant's own words (which SKU, how much) are in the saga's history.
const (
	ReasonInsufficientStock  = "insufficient stock"
	ReasonInsufficientCredit = "insufficient credit"
	// ReasonPriceChanged: a product's price rose between the order and the
	// reservation; the customer is not charged more than the order showed.
	ReasonPriceChanged = "price changed"
)

// UnknownSKUError names the SKUs of an order that the catalog does not sell.
type UnknownSKUError struct {
	SKUs []string
}

func (e *UnknownSKUError) Error() string {
	return "unknown SKU: " + strings.Join(e.SKUs, ", ")
}

// Errors.
var (
	ErrOrderNotFound = errors.New("order not found")
	// ErrIdempotencyKeyReused: the same Idempotency-Key came with a
	// different request.
	ErrIdempotencyKeyReused = errors.New("this Idempotency-Key was used for a different request")
)

// TooManyPendingError refuses an order of a customer who already has Max
// orders PENDING: stock is reserved before credit is checked, so without a
// cap one account could hold stock with orders it can never pay for.
type TooManyPendingError struct{ Max int }

func (e *TooManyPendingError) Error() string {
	return fmt.Sprintf("you already have %d orders pending: wait until one of them is decided", e.Max)
}

// ValidationError names the field that is wrong.
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Message }

// TransitionError is a status change the order's state does not allow.
type TransitionError struct {
	From, To Status
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("an order cannot go from %s to %s", e.From, e.To)
}

var skuPattern = regexp.MustCompile(`^[A-Z0-9][A-Z0-9_-]{0,63}$`)

// Item is one line of an order. UnitPriceCents is 0 until the catalog has
// reserved the stock and said what it costs.
type Item struct {
	SKU            string `json:"sku"`
	Quantity       int    `json:"quantity"`
	UnitPriceCents int64  `json:"unit_price_cents"`
}

// NormalizeItems checks the lines a customer asked for and merges lines of
// the same SKU (upper-cased), sorted by SKU.
func NormalizeItems(items []Item) ([]Item, error) {
	if len(items) == 0 {
		return nil, &ValidationError{"items", "must have at least one line"}
	}
	if len(items) > MaxLines {
		return nil, &ValidationError{"items", fmt.Sprintf("must have at most %d lines", MaxLines)}
	}
	merged := map[string]int{}
	for i, it := range items {
		sku := strings.ToUpper(strings.TrimSpace(it.SKU))
		if !skuPattern.MatchString(sku) {
			return nil, &ValidationError{fmt.Sprintf("items[%d].sku", i), "must be 1 to 64 letters, digits, '-' or '_'"}
		}
		if it.Quantity < 1 || it.Quantity > MaxQuantity {
			return nil, &ValidationError{fmt.Sprintf("items[%d].quantity", i), fmt.Sprintf("must be an integer between 1 and %d", MaxQuantity)}
		}
		merged[sku] += it.Quantity
		if merged[sku] > MaxQuantity {
			return nil, &ValidationError{fmt.Sprintf("items[%d].quantity", i), fmt.Sprintf("the lines for %s add up to more than %d", sku, MaxQuantity)}
		}
	}
	out := make([]Item, 0, len(merged))
	for sku, q := range merged {
		out = append(out, Item{SKU: sku, Quantity: q})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SKU < out[j].SKU })
	return out, nil
}

// Order is a customer's order.
type Order struct {
	ID         uuid.UUID
	UserID     uuid.UUID
	Items      []Item
	TotalCents int64
	Status     Status
	Reason     string // why it was cancelled
	CreatedAt  time.Time
	UpdatedAt  time.Time
	// Version counts the order's events (OrderCreated is 1, OrderApproved
	// or OrderCancelled 2): a read model that has applied Version events of
	// the order shows at least this state (catalogservice's
	// GET /catalog/orders/{id}?min_version=). Set by the repository.
	Version int
}

// NewOrder makes a PENDING order for userID with new ID.
func NewOrder(userID uuid.UUID, items []Item, now time.Time) (*Order, error) {
	if userID == uuid.Nil {
		return nil, &ValidationError{"user_id", "is required"}
	}
	norm, err := NormalizeItems(items)
	if err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	return &Order{ID: id, UserID: userID, Items: norm, Status: StatusPending, CreatedAt: now, UpdatedAt: now}, nil
}

// CanBeSeenBy reports whether userID may see the order: only its owner.
// Everyone else is told it does not exist.
func (o *Order) CanBeSeenBy(userID uuid.UUID) bool { return o.UserID == userID }

// Price records the unit prices the catalog reserved the stock at, and the
// total. Only a PENDING order is priced, and the priced lines must be the
// order's lines.
func (o *Order) Price(priced []Item, totalCents int64, now time.Time) error {
	if o.Status != StatusPending {
		return &TransitionError{o.Status, StatusPending}
	}
	if len(priced) != len(o.Items) {
		return fmt.Errorf("priced %d lines, the order has %d", len(priced), len(o.Items))
	}
	bySKU := map[string]Item{}
	var sum int64
	for _, p := range priced {
		bySKU[strings.ToUpper(p.SKU)] = p
		sum += int64(p.Quantity) * p.UnitPriceCents
	}
	for i, it := range o.Items {
		p, ok := bySKU[it.SKU]
		if !ok || p.Quantity != it.Quantity || p.UnitPriceCents <= 0 {
			return fmt.Errorf("the priced lines do not match the order's line %s x %d", it.SKU, it.Quantity)
		}
		o.Items[i].UnitPriceCents = p.UnitPriceCents
	}
	if sum != totalCents {
		return fmt.Errorf("the priced lines add up to %d cents, not %d", sum, totalCents)
	}
	o.TotalCents, o.UpdatedAt = totalCents, now
	return nil
}

// PriceChangedError is Charge's refusal: the reservation priced a line
// above the price the customer was shown when ordering.
type PriceChangedError struct {
	SKU                   string
	QuotedCents, NowCents int64
}

func (e *PriceChangedError) Error() string {
	return fmt.Sprintf("%s: %s costs %d cents now, the order was placed at %d", ReasonPriceChanged, e.SKU, e.NowCents, e.QuotedCents)
}

// Charge is what the order is charged for a reservation at the prices
// reserved: the prices the customer was shown when ordering (the order's
// UnitPriceCents, the catalog's list prices then), never others. A line the
// reservation priced higher is a *PriceChangedError, and the saga cancels
// the order with ReasonPriceChanged rather than charge without the
// customer's consent. A line priced lower is still charged at the price
// shown: the customer agreed to it, and the order, its charge and the
// catalog's view of it (built from OrderCreated's prices) stay one story.
// A line placed without a price (no catalog asked at the door:
// UnitPriceCents 0) takes the reservation's. reserved must already match
// the order's lines (Price checks that).
func (o *Order) Charge(reserved []Item) ([]Item, int64, error) {
	quoted := map[string]int64{}
	for _, it := range o.Items {
		quoted[strings.ToUpper(it.SKU)] = it.UnitPriceCents
	}
	out := make([]Item, len(reserved))
	var total int64
	for i, r := range reserved {
		q := quoted[strings.ToUpper(r.SKU)]
		if q > 0 && r.UnitPriceCents > q {
			return nil, 0, &PriceChangedError{SKU: r.SKU, QuotedCents: q, NowCents: r.UnitPriceCents}
		}
		out[i] = r
		if q > 0 {
			out[i].UnitPriceCents = q
		}
		total += int64(out[i].Quantity) * out[i].UnitPriceCents
	}
	return out, total, nil
}

// Approve makes a PENDING order APPROVED. Approving an approved order is a
// no-op (a redelivered reply).
func (o *Order) Approve(now time.Time) error {
	switch o.Status {
	case StatusApproved:
		return nil
	case StatusPending:
		o.Status, o.UpdatedAt = StatusApproved, now
		return nil
	}
	return &TransitionError{o.Status, StatusApproved}
}

// Cancel makes a PENDING order CANCELLED with the reason. Cancelling a
// cancelled order is a no-op.
func (o *Order) Cancel(reason string, now time.Time) error {
	switch o.Status {
	case StatusCancelled:
		return nil
	case StatusPending:
		o.Status, o.Reason, o.UpdatedAt = StatusCancelled, reason, now
		return nil
	}
	return &TransitionError{o.Status, StatusCancelled}
}

// ValidateIdempotencyKey checks an Idempotency-Key header value: 1 to 255
// visible ASCII characters.
func ValidateIdempotencyKey(key string) error {
	if key == "" || len(key) > MaxIdempotencyKeyLen {
		return &ValidationError{"Idempotency-Key", fmt.Sprintf("must be 1 to %d characters", MaxIdempotencyKeyLen)}
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return &ValidationError{"Idempotency-Key", "must be visible ASCII characters"}
		}
	}
	return nil
}

// RequestFingerprint identifies what an order request asked for, after
// normalization, so that a retry with the same Idempotency-Key is recognised
// as the same request ("a" x1 + "A" x1 is the same as "A" x2) and a
// different request under the same key is refused.
func RequestFingerprint(userID uuid.UUID, normalized []Item) string {
	h := sha256.New()
	h.Write([]byte(userID.String()))
	for _, it := range normalized {
		h.Write([]byte{0})
		h.Write([]byte(it.SKU))
		h.Write([]byte{0})
		h.Write([]byte(strconv.Itoa(it.Quantity)))
	}
	return hex.EncodeToString(h.Sum(nil))
}
