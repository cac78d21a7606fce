package main

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// The event every system publishes: an order with three lines, about 200
// bytes of Avro binary.
const eventType = "outboxbench.OrderPlaced"

const eventSchema = `{
  "type": "record", "name": "OrderPlaced", "namespace": "outboxbench",
  "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "customer_id", "type": "string"},
    {"name": "amount_cents", "type": "long"},
    {"name": "currency", "type": "string"},
    {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "lines", "type": {"type": "array", "items": {
      "type": "record", "name": "Line", "fields": [
        {"name": "sku", "type": "string"},
        {"name": "quantity", "type": "int"},
        {"name": "price_cents", "type": "long"}
      ]}}},
    {"name": "note", "type": "string", "default": ""}
  ]
}`

type orderLine struct {
	SKU        string `avro:"sku"`
	Quantity   int32  `avro:"quantity"`
	PriceCents int64  `avro:"price_cents"`
}

type orderPlaced struct {
	OrderID     string      `avro:"order_id"`
	CustomerID  string      `avro:"customer_id"`
	AmountCents int64       `avro:"amount_cents"`
	Currency    string      `avro:"currency"`
	PlacedAt    time.Time   `avro:"placed_at"`
	Lines       []orderLine `avro:"lines"`
	Note        string      `avro:"note"`
}

// seqHeader carries the message's sequence number in the run, so the
// consumer can match the record to its commit time.
const seqHeader = "bench_seq"

// event returns the seq-th event. Each order is its own key (aggregate).
func event(seq int64) orderPlaced {
	var b [16]byte
	binary.BigEndian.PutUint64(b[8:], uint64(seq))
	b[0] = 0x42
	order := uuid.Must(uuid.FromBytes(b[:]))
	b[0] = 0x43
	customer := uuid.Must(uuid.FromBytes(b[:]))
	return orderPlaced{
		OrderID:     order.String(),
		CustomerID:  customer.String(),
		AmountCents: 4990 + seq%1000,
		Currency:    "EUR",
		PlacedAt:    time.Now().UTC().Truncate(time.Microsecond),
		Lines: []orderLine{
			{SKU: fmt.Sprintf("SKU-%07d", seq%9973), Quantity: 1, PriceCents: 1990},
			{SKU: fmt.Sprintf("SKU-%07d", seq%7919), Quantity: 2, PriceCents: 1000},
			{SKU: fmt.Sprintf("SKU-%07d", seq%6007), Quantity: 1, PriceCents: 1000},
		},
		Note: "leave the parcel with the neighbour at number 12 if nobody answers",
	}
}

func keyOf(e orderPlaced) string { return e.OrderID }
