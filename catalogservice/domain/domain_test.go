package domain

import (
	"testing"
	"time"
)

func TestOrderViewIgnoresStaleAndDuplicateEvents(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	created := OrderEvent{OrderID: "o", UserID: "u", Status: OrderPending, OccurredAt: t0,
		Items: []ViewItem{{SKU: "A", Name: "Apple", Quantity: 2, UnitPriceCents: 50}}, TotalCents: 100}
	approved := OrderEvent{OrderID: "o", UserID: "u", Status: OrderApproved, TotalCents: 100, OccurredAt: t0.Add(time.Second)}
	cancelled := OrderEvent{OrderID: "o", UserID: "u", Status: OrderCancelled, Reason: "late", OccurredAt: t0.Add(2 * time.Second)}

	var inOrder OrderView
	inOrder.Apply(created)
	inOrder.Apply(approved)
	var reversed OrderView
	reversed.Apply(approved)
	reversed.Apply(created)
	for name, v := range map[string]OrderView{"in order": inOrder, "reversed": reversed} {
		if v.Status != OrderApproved || len(v.Items) != 1 || v.Items[0].Name != "Apple" || v.TotalCents != 100 {
			t.Errorf("%s: %+v", name, v)
		}
	}
	if reversed.Apply(created) || reversed.Apply(approved) {
		t.Error("a duplicate event changed the view")
	}
	if reversed.Apply(cancelled) || reversed.Status != OrderApproved {
		t.Errorf("a final status was overwritten: %+v", reversed)
	}
}

func TestNormalizeLines(t *testing.T) {
	t.Parallel()
	got, err := NormalizeLines([]Line{{SKU: "b", Quantity: 1}, {SKU: "A", Quantity: 2}, {SKU: "B", Quantity: 3}})
	if err != nil || len(got) != 2 || got[0] != (Line{SKU: "A", Quantity: 2}) || got[1] != (Line{SKU: "B", Quantity: 4}) {
		t.Fatalf("%v %v", got, err)
	}
	for name, bad := range map[string][]Line{
		"empty":           nil,
		"zero":            {{SKU: "A", Quantity: 0}},
		"negative":        {{SKU: "A", Quantity: -1}},
		"too many":        {{SKU: "A", Quantity: MaxQuantity + 1}},
		"merged too many": {{SKU: "A", Quantity: MaxQuantity}, {SKU: "a", Quantity: 1}},
		"bad sku":         {{SKU: "no spaces", Quantity: 1}},
	} {
		if _, err := NormalizeLines(bad); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestReservationBarrier(t *testing.T) {
	t.Parallel()
	r := &Reservation{OrderID: "o"}
	if _, done := r.Decided(); done {
		t.Fatal("new reservation decided")
	}
	r.Reserved([]Line{{SKU: "A", Quantity: 2, UnitPriceCents: 10}})
	if out, done := r.Decided(); !done || !out.OK || out.TotalCents != 20 {
		t.Fatalf("duplicate reserve %+v", out)
	}
	back, out := r.Release()
	if len(back) != 1 || !out.Changed {
		t.Fatalf("release %v %+v", back, out)
	}
	if back, out := r.Release(); back != nil || out.Changed {
		t.Fatal("second release gave back again")
	}
	if out, done := r.Decided(); !done || out.OK {
		t.Fatal("reserve after release would reserve")
	}
	early := &Reservation{OrderID: "p"}
	if back, _ := early.Release(); back != nil || early.Status != ReservationVoided {
		t.Fatal("release without reservation")
	}
	if out, done := early.Decided(); !done || out.OK {
		t.Fatal("reserve after its release would reserve")
	}
}
