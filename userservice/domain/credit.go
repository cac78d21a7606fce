package domain

// ChargeStatus is where the credit movement for one order stands.
//
// The charge row is the participant barrier of PITFALLS.md 19: with it a
// duplicate DebitCredit has no second effect and gets the first answer, a
// RefundCredit without a debit does nothing (and is remembered as VOIDED),
// and a DebitCredit arriving after its refund does nothing.
//
//	            Debit ok         Refund
//	(none) ─────────────► DEBITED ──────► REFUNDED
//	   │ Debit refused
//	   ├────────────────► REFUSED   (Refund: no-op)
//	   │ Refund first
//	   └────────────────► VOIDED    (Debit: no-op)
type ChargeStatus string

const (
	ChargeNone     ChargeStatus = ""
	ChargeDebited  ChargeStatus = "DEBITED"
	ChargeRefused  ChargeStatus = "REFUSED"
	ChargeRefunded ChargeStatus = "REFUNDED"
	ChargeVoided   ChargeStatus = "VOIDED"
)

// Charge is the credit movement for one order.
type Charge struct {
	OrderID     string
	UserID      string
	AmountCents int64
	Status      ChargeStatus
	Reason      string // why it was refused
}

// Outcome is the answer to a credit command. A refusal is an outcome, not an
// error: it is recorded, so that a duplicate command gets the same answer
// even if the balance changed in between.
type Outcome struct {
	OK           bool   // the debit stands (or the refund was applied or was not needed)
	Changed      bool   // this call moved credit; false for duplicates and no-ops
	Reason       string // why not OK
	AmountCents  int64
	BalanceCents int64
}

// Debit takes amount from u for c's order, once. u is nil when the user
// does not exist.
func (c *Charge) Debit(u *User, amount int64) Outcome {
	balance := func() int64 {
		if u == nil {
			return 0
		}
		return u.CreditCents
	}
	switch c.Status {
	case ChargeDebited: // duplicate
		return Outcome{OK: true, AmountCents: c.AmountCents, BalanceCents: balance()}
	case ChargeRefused: // duplicate of a refused debit: same answer
		return Outcome{Reason: c.Reason, AmountCents: c.AmountCents, BalanceCents: balance()}
	case ChargeRefunded, ChargeVoided: // arrived after its compensation
		return Outcome{Reason: "the order was already compensated", AmountCents: c.AmountCents, BalanceCents: balance()}
	}
	refuse := func(reason string) Outcome {
		c.Status, c.Reason, c.AmountCents = ChargeRefused, reason, amount
		return Outcome{Changed: true, Reason: reason, AmountCents: amount, BalanceCents: balance()}
	}
	switch {
	case u == nil:
		return refuse(ErrUserNotFound.Error())
	case amount <= 0:
		return refuse("amount must be positive")
	case u.CreditCents < amount:
		return refuse(ErrInsufficientCredit.Error())
	}
	u.CreditCents -= amount
	c.Status, c.AmountCents = ChargeDebited, amount
	return Outcome{OK: true, Changed: true, AmountCents: amount, BalanceCents: u.CreditCents}
}

// Refund gives back what Debit took for c's order, once. The amount is the
// one recorded at debit time, whatever the command says.
func (c *Charge) Refund(u *User) Outcome {
	switch c.Status {
	case ChargeDebited:
		if u == nil { // the user was deleted: nothing to credit
			c.Status = ChargeRefunded
			return Outcome{OK: true, Changed: true, AmountCents: c.AmountCents}
		}
		u.CreditCents += c.AmountCents
		c.Status = ChargeRefunded
		return Outcome{OK: true, Changed: true, AmountCents: c.AmountCents, BalanceCents: u.CreditCents}
	case ChargeNone: // refund before (or without) the debit: remember it
		c.Status = ChargeVoided
		return Outcome{OK: true, Changed: true}
	}
	var balance int64
	if u != nil {
		balance = u.CreditCents
	}
	return Outcome{OK: true, AmountCents: c.AmountCents, BalanceCents: balance}
}
