package domain

// ReservationStatus is where the stock reservation of one order stands. As
// with userservice's charges, the reservation row is the participant
// barrier (PITFALLS.md 19):
//
//	          Reserve ok          Release
//	(none) ──────────────► RESERVED ──────► RELEASED
//	   │ Reserve refused
//	   ├─────────────────► REJECTED   (Release: no-op)
//	   │ Release first
//	   └─────────────────► VOIDED     (Reserve: no-op)
type ReservationStatus string

const (
	ReservationNone     ReservationStatus = ""
	ReservationReserved ReservationStatus = "RESERVED"
	ReservationRejected ReservationStatus = "REJECTED"
	ReservationReleased ReservationStatus = "RELEASED"
	ReservationVoided   ReservationStatus = "VOIDED"
)

// Reservation is the stock taken for one order: all of its lines or none.
type Reservation struct {
	OrderID string
	Status  ReservationStatus
	Lines   []Line // what was taken, with the unit prices at the time
	Reason  string // why it was rejected
}

// Outcome answers a stock command. A refusal is an outcome, not an error:
// it is recorded, and a duplicate command gets the same answer.
type Outcome struct {
	OK         bool
	Changed    bool // this call moved stock (or recorded a decision)
	Reason     string
	Lines      []Line
	TotalCents int64
}

// Decided reports whether the reservation already answered a Reserve, and
// the answer a duplicate gets.
func (r *Reservation) Decided() (Outcome, bool) {
	switch r.Status {
	case ReservationReserved:
		return Outcome{OK: true, Lines: r.Lines, TotalCents: Total(r.Lines)}, true
	case ReservationRejected:
		return Outcome{Reason: r.Reason}, true
	case ReservationReleased, ReservationVoided:
		return Outcome{Reason: "the order was already compensated"}, true
	}
	return Outcome{}, false
}

// Reserved records that priced lines were taken.
func (r *Reservation) Reserved(priced []Line) Outcome {
	r.Status, r.Lines, r.Reason = ReservationReserved, priced, ""
	return Outcome{OK: true, Changed: true, Lines: priced, TotalCents: Total(priced)}
}

// Rejected records that nothing was taken, and why.
func (r *Reservation) Rejected(reason string) Outcome {
	r.Status, r.Lines, r.Reason = ReservationRejected, nil, reason
	return Outcome{Changed: true, Reason: reason}
}

// Release decides what a ReleaseStock does: it returns the lines to put back
// (nil when there is nothing to give back) and moves the status on.
func (r *Reservation) Release() (giveBack []Line, out Outcome) {
	switch r.Status {
	case ReservationReserved:
		giveBack = r.Lines
		r.Status = ReservationReleased
		return giveBack, Outcome{OK: true, Changed: true, Lines: giveBack, TotalCents: Total(giveBack)}
	case ReservationNone:
		r.Status = ReservationVoided
		return nil, Outcome{OK: true, Changed: true}
	}
	return nil, Outcome{OK: true}
}

// Shortage says why the stock of an order could not be taken.
type Shortage struct {
	SKU     string
	Unknown bool // no such product
}

// Reason is the refusal's reason.
func (s *Shortage) Reason() string {
	if s.Unknown {
		return "unknown SKU " + s.SKU
	}
	return "insufficient stock for " + s.SKU
}
