// Package domain holds catalogservice's rules: products, stock
// reservations for orders, and the catalog's view of orders. It does no I/O.
package domain

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// Bounds. A quantity outside 1..MaxQuantity or an order of more than
// MaxLines lines is refused before anything is reserved.
const (
	MaxQuantity   = 1000
	MaxLines      = 100
	MaxNameLen    = 200
	MaxPriceCents = 100_000_000 // 1,000,000.00
	MaxStock      = 1_000_000
)

// Errors.
var (
	ErrProductNotFound = errors.New("product not found")
	ErrSKUTaken        = errors.New("a product with this SKU already exists")
	ErrOrderNotFound   = errors.New("order not found")
)

// ValidationError names the field that is wrong.
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Message }

var skuPattern = regexp.MustCompile(`^[A-Z0-9][A-Z0-9_-]{0,63}$`)

// NormalizeSKU checks a SKU (letters, digits, '-' and '_', at most 64) and
// returns it in upper case, the form it is stored in.
func NormalizeSKU(sku string) (string, error) {
	s := strings.ToUpper(strings.TrimSpace(sku))
	if s == "" {
		return "", &ValidationError{"sku", "is required"}
	}
	if !skuPattern.MatchString(s) {
		return "", &ValidationError{"sku", "must be 1 to 64 letters, digits, '-' or '_'"}
	}
	return s, nil
}

// Product is something the shop sells.
type Product struct {
	SKU        string
	Name       string
	PriceCents int64
	Stock      int
	CreatedAt  time.Time
}

// NewProduct checks and builds a product.
func NewProduct(sku, name string, priceCents int64, stock int, now time.Time) (*Product, error) {
	sku, err := NormalizeSKU(sku)
	if err != nil {
		return nil, err
	}
	name = strings.TrimSpace(name)
	switch {
	case name == "":
		return nil, &ValidationError{"name", "is required"}
	case utf8.RuneCountInString(name) > MaxNameLen:
		return nil, &ValidationError{"name", fmt.Sprintf("must be at most %d characters", MaxNameLen)}
	case priceCents < 1 || priceCents > MaxPriceCents:
		return nil, &ValidationError{"price", fmt.Sprintf("must be between 1 and %d cents", MaxPriceCents)}
	case stock < 0 || stock > MaxStock:
		return nil, &ValidationError{"stock", fmt.Sprintf("must be between 0 and %d", MaxStock)}
	}
	return &Product{SKU: sku, Name: name, PriceCents: priceCents, Stock: stock, CreatedAt: now}, nil
}

// Line is a quantity of one product, priced once reserved.
type Line struct {
	SKU            string `json:"sku"`
	Quantity       int    `json:"quantity"`
	UnitPriceCents int64  `json:"unit_price_cents,omitempty"`
}

// NormalizeLines checks the lines of an order and merges lines of the same
// SKU, sorted by SKU: the order in which stock rows are locked, so that two
// orders never wait for each other's rows in opposite orders (deadlock).
func NormalizeLines(lines []Line) ([]Line, error) {
	if len(lines) == 0 {
		return nil, &ValidationError{"items", "must not be empty"}
	}
	if len(lines) > MaxLines {
		return nil, &ValidationError{"items", fmt.Sprintf("must have at most %d lines", MaxLines)}
	}
	merged := map[string]int{}
	for i, l := range lines {
		sku, err := NormalizeSKU(l.SKU)
		if err != nil {
			return nil, &ValidationError{fmt.Sprintf("items[%d].sku", i), err.(*ValidationError).Message}
		}
		if l.Quantity < 1 || l.Quantity > MaxQuantity {
			return nil, &ValidationError{fmt.Sprintf("items[%d].quantity", i), fmt.Sprintf("must be between 1 and %d", MaxQuantity)}
		}
		merged[sku] += l.Quantity
		if merged[sku] > MaxQuantity {
			return nil, &ValidationError{fmt.Sprintf("items[%d].quantity", i), fmt.Sprintf("the lines for %s add up to more than %d", sku, MaxQuantity)}
		}
	}
	out := make([]Line, 0, len(merged))
	for sku, q := range merged {
		out = append(out, Line{SKU: sku, Quantity: q})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SKU < out[j].SKU })
	return out, nil
}

// Total is the sum of quantity × unit price.
func Total(lines []Line) int64 {
	var t int64
	for _, l := range lines {
		t += int64(l.Quantity) * l.UnitPriceCents
	}
	return t
}
