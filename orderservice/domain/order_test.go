package domain

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
)

var now = time.Unix(1_700_000_000, 0)

func TestNewOrderValidatesAndNormalizes(t *testing.T) {
	t.Parallel()
	user := uuid.New()
	o, err := NewOrder(user, []Item{{SKU: "b-1", Quantity: 2}, {SKU: "A", Quantity: 1}, {SKU: "B-1", Quantity: 3}}, now)
	if err != nil {
		t.Fatal(err)
	}
	if o.Status != StatusPending || len(o.Items) != 2 || o.Items[0] != (Item{SKU: "A", Quantity: 1}) || o.Items[1] != (Item{SKU: "B-1", Quantity: 5}) {
		t.Fatalf("%+v", o)
	}
	many := make([]Item, MaxLines+1)
	for i := range many {
		many[i] = Item{SKU: "A", Quantity: 1}
	}
	for name, items := range map[string][]Item{
		"no lines":          nil,
		"zero quantity":     {{SKU: "A", Quantity: 0}},
		"negative quantity": {{SKU: "A", Quantity: -1}},
		"huge quantity":     {{SKU: "A", Quantity: MaxQuantity + 1}},
		"merged too large":  {{SKU: "A", Quantity: MaxQuantity}, {SKU: "a", Quantity: 1}},
		"empty sku":         {{SKU: "", Quantity: 1}},
		"bad sku":           {{SKU: "A B", Quantity: 1}},
		"too many lines":    many,
	} {
		var ve *ValidationError
		if _, err := NewOrder(user, items, now); !errors.As(err, &ve) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := NewOrder(uuid.Nil, []Item{{SKU: "A", Quantity: 1}}, now); err == nil {
		t.Error("order without user")
	}
}

func TestOrderLifecycle(t *testing.T) {
	t.Parallel()
	o, _ := NewOrder(uuid.New(), []Item{{SKU: "A", Quantity: 2}, {SKU: "B", Quantity: 1}}, now)
	if err := o.Price([]Item{{SKU: "B", Quantity: 1, UnitPriceCents: 30}, {SKU: "A", Quantity: 2, UnitPriceCents: 10}}, 50, now); err != nil {
		t.Fatal(err)
	}
	if o.TotalCents != 50 || o.Items[0].UnitPriceCents != 10 {
		t.Fatalf("%+v", o)
	}
	if err := o.Approve(now); err != nil || o.Status != StatusApproved {
		t.Fatal(err)
	}
	if err := o.Approve(now); err != nil {
		t.Fatalf("approving twice: %v", err)
	}
	var te *TransitionError
	if err := o.Cancel("late", now); !errors.As(err, &te) || o.Status != StatusApproved {
		t.Fatalf("cancel after approve: %v", err)
	}
	if err := o.Price(nil, 0, now); !errors.As(err, &te) {
		t.Fatalf("price after approve: %v", err)
	}

	c, _ := NewOrder(uuid.New(), []Item{{SKU: "A", Quantity: 1}}, now)
	if err := c.Cancel("insufficient credit", now); err != nil || c.Status != StatusCancelled || c.Reason != "insufficient credit" {
		t.Fatal(err)
	}
	if err := c.Approve(now); !errors.As(err, &te) {
		t.Fatalf("approve after cancel: %v", err)
	}
}

func TestPriceRefusesLinesThatAreNotTheOrders(t *testing.T) {
	t.Parallel()
	o, _ := NewOrder(uuid.New(), []Item{{SKU: "A", Quantity: 2}}, now)
	for name, c := range map[string]struct {
		priced []Item
		total  int64
	}{
		"other sku":      {[]Item{{SKU: "B", Quantity: 2, UnitPriceCents: 5}}, 10},
		"other quantity": {[]Item{{SKU: "A", Quantity: 3, UnitPriceCents: 5}}, 15},
		"free":           {[]Item{{SKU: "A", Quantity: 2, UnitPriceCents: 0}}, 0},
		"wrong total":    {[]Item{{SKU: "A", Quantity: 2, UnitPriceCents: 5}}, 11},
		"extra line":     {[]Item{{SKU: "A", Quantity: 2, UnitPriceCents: 5}, {SKU: "B", Quantity: 1, UnitPriceCents: 1}}, 11},
	} {
		if err := o.Price(c.priced, c.total, now); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestIdempotencyKeyAndFingerprint(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"", "has space", "tab\t", string(make([]byte, 256)), "é"} {
		if ValidateIdempotencyKey(bad) == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if ValidateIdempotencyKey("3f2c-ok_key.1") != nil {
		t.Error("refused a good key")
	}
	user := uuid.New()
	a, _ := NormalizeItems([]Item{{SKU: "a", Quantity: 1}, {SKU: "A", Quantity: 1}})
	b, _ := NormalizeItems([]Item{{SKU: "A", Quantity: 2}})
	c, _ := NormalizeItems([]Item{{SKU: "A", Quantity: 3}})
	if RequestFingerprint(user, a) != RequestFingerprint(user, b) {
		t.Error("equivalent requests differ")
	}
	if RequestFingerprint(user, b) == RequestFingerprint(user, c) || RequestFingerprint(user, b) == RequestFingerprint(uuid.New(), b) {
		t.Error("different requests look the same")
	}
}
