package domain

import "testing"

func TestChargeIsAParticipantBarrier(t *testing.T) {
	t.Parallel()
	u := &User{CreditCents: 1000}

	c := &Charge{OrderID: "o1"}
	if o := c.Debit(u, 400); !o.OK || !o.Changed || u.CreditCents != 600 {
		t.Fatalf("first debit %+v, balance %d", o, u.CreditCents)
	}
	if o := c.Debit(u, 400); !o.OK || o.Changed || u.CreditCents != 600 {
		t.Fatalf("duplicate debit %+v, balance %d", o, u.CreditCents)
	}
	if o := c.Refund(u); !o.OK || !o.Changed || u.CreditCents != 1000 {
		t.Fatalf("refund %+v, balance %d", o, u.CreditCents)
	}
	if o := c.Refund(u); o.Changed || u.CreditCents != 1000 {
		t.Fatalf("duplicate refund %+v, balance %d", o, u.CreditCents)
	}
	if o := c.Debit(u, 400); o.OK || o.Changed || u.CreditCents != 1000 {
		t.Fatalf("debit after refund %+v, balance %d", o, u.CreditCents)
	}

	early := &Charge{OrderID: "o2"}
	if o := early.Refund(u); !o.OK || early.Status != ChargeVoided || u.CreditCents != 1000 {
		t.Fatalf("refund without debit %+v, balance %d", o, u.CreditCents)
	}
	if o := early.Debit(u, 100); o.OK || u.CreditCents != 1000 {
		t.Fatalf("debit after its refund %+v, balance %d", o, u.CreditCents)
	}

	poor := &Charge{OrderID: "o3"}
	if o := poor.Debit(u, 5000); o.OK || o.Reason != ErrInsufficientCredit.Error() || u.CreditCents != 1000 {
		t.Fatalf("insufficient %+v", o)
	}
	u.CreditCents = 10000 // another order's refund, say
	if o := poor.Debit(u, 5000); o.OK || u.CreditCents != 10000 {
		t.Fatalf("a duplicate of a refused debit must be refused again, got %+v", o)
	}
	if o := (&Charge{}).Debit(nil, 10); o.OK {
		t.Fatal("debit of an unknown user accepted")
	}
	if o := (&Charge{}).Debit(u, 0); o.OK {
		t.Fatal("zero debit accepted")
	}
}

func TestNormalizeEmail(t *testing.T) {
	t.Parallel()
	if e, err := NormalizeEmail(" Ann@Example.COM "); err != nil || e != "ann@example.com" {
		t.Fatalf("%q %v", e, err)
	}
	for _, bad := range []string{"", "ann", "ann@", "Ann <ann@example.com>", "ann@localhost", "a b@example.com"} {
		if _, err := NormalizeEmail(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
