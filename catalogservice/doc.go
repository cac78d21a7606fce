// Package catalogservice is the shop's catalog: products and their stock,
// which the order saga reserves and, when the order fails later, releases;
// and a CQRS read model of orders fed by order events.
//
// # What it shows
//
//   - No oversell: each line is taken with one conditional
//     `UPDATE products SET stock = stock - $n WHERE sku = $1 AND stock >= $n`,
//     lines in SKU order (no deadlocks between orders), all inside a
//     savepoint that is rolled back when one line falls short: an order gets
//     all its lines or none. 200 concurrent orders for 5 units give exactly
//     5 reservations (TestNoOversellUnderConcurrency).
//   - A saga participant: reserve_stock and release_stock arrive on
//     catalog.commands; the stock_reservations row per order records exactly
//     what was taken, so a release gives back exactly that, once, and a
//     reservation arriving after its release does nothing.
//   - CQRS: order_views is built only from OrderCreated, OrderApproved and
//     OrderCancelled on order.events (consumed through the saga inbox, so
//     redeliveries are skipped), with product names joined in at the time.
//     Events may arrive twice or out of order: a status never moves back and
//     the first final status wins.
//
// The reservation of one order:
//
//	stateDiagram-v2
//	    [*] --> RESERVED: reserve_stock, every line available
//	    [*] --> REJECTED: reserve_stock, a line short or unknown
//	    [*] --> VOIDED: release_stock first (nothing to give back)
//	    RESERVED --> RELEASED: release_stock (stock given back)
//
// Layout (as in wild-workouts): domain/ holds the rules (no I/O), app/ the use
// cases, adapters/ Postgres, ports/ the HTTP API, the saga handlers and the
// order-event handler. service.go is the composition root;
// cmd/catalogservice/main.go runs it with the configuration of the
// environment (see Config).
package catalogservice
