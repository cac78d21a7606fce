// Package orderservice is the shop's order service: customers place orders,
// and the order saga, orchestrated here, decides them with the catalog
// (stock) and the user service (credit).
//
// # What it shows
//
//   - Saga orchestration (package saga): the definition in app/saga.go is
//     the whole business process in one place: create, reserve stock,
//     debit credit (the pivot), approve; a "no" undoes the completed steps
//     in reverse order and cancels the order with the reason.
//   - One transaction per decision. Placing an order writes the order row,
//     its OrderCreated event (outbox), the saga's row and its first command
//     (outbox) in one transaction: an order without its saga, or a saga
//     whose order rolled back, cannot exist. Each later step changes the
//     order, writes its event and the saga's next state and command in the
//     orchestrator's transaction. No dual write anywhere.
//   - The outbox write lives in the repository (adapters.Orders Create and
//     Update): whoever changes an order cannot forget its event.
//   - Idempotency-Key on POST /orders: the key is a unique index per user;
//     a retry gets the first order back, a different order under the same
//     key is refused, and two concurrent first attempts make one order.
//   - Checking at the door without owning the data: the order service has
//     no product table (database per service). It asks the catalog's HTTP
//     API whether it sells the SKUs before writing anything (422 for an
//     unknown SKU), but the saga's reservation stays the authority on stock
//     and on the price charged.
//   - Observable sagas: GET /orders/{id} shows the saga's state and every
//     attempt of every step (saga.Admin.Get), so a customer and an operator see
//     why an order was cancelled.
//
// One order, approved:
//
//	sequenceDiagram
//	    participant C as customer
//	    participant O as orderservice
//	    participant K as Kafka
//	    participant S as catalogservice
//	    participant U as userservice
//	    C->>O: POST /orders (Bearer token)
//	    O->>S: GET /products/{sku} (unknown SKU: 422)
//	    Note over O: one transaction: order PENDING, OrderCreated,<br/>saga row, reserve_stock command
//	    O-->>C: 202 {"orderId", "status": "PENDING"}
//	    O->>K: relay: OrderCreated, reserve_stock
//	    K->>S: reserve_stock
//	    S->>K: reply StockReserved (or REJECTED "insufficient stock for ...")
//	    K->>O: reply
//	    Note over O: one transaction: prices, saga state, debit_credit command
//	    O->>K: debit_credit
//	    K->>U: debit_credit
//	    U->>K: reply CreditDebited (or REJECTED "insufficient credit")
//	    K->>O: reply
//	    Note over O: one transaction: order APPROVED, OrderApproved, saga succeeded
//	    C->>O: GET /orders/{id}: APPROVED, with the saga's history
//
// An order's states:
//
//	stateDiagram-v2
//	    [*] --> PENDING: POST /orders
//	    PENDING --> APPROVED: stock reserved and credit debited
//	    PENDING --> CANCELLED: insufficient stock
//	    PENDING --> CANCELLED: insufficient credit (stock released first)
//
// The saga's own diagram, rendered from its definition, is in README.md.
//
// Layout (as in wild-workouts): domain/ holds the rules (no I/O), app/ the use
// cases and the saga's definition, adapters/ Postgres and the catalog's HTTP
// API, ports/ the HTTP API. service.go is the composition root;
// cmd/orderservice/main.go runs it with the configuration of the
// environment (see Config).
package orderservice
