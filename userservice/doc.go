// Package userservice is the shop's user service: sign-up, login, access
// tokens and the keys that verify them, and each user's credit, which the
// order saga debits and, when the order fails later, refunds.
//
// # What it shows
//
//   - Passwords hashed with argon2id (every byte counts, unlike bcrypt's 72),
//     compared in constant time; an unknown email costs as much as a wrong
//     password, so login does not reveal who has an account; attempts are
//     rate-limited per email and address before any hashing.
//   - Access tokens signed with Ed25519 (EdDSA), carrying sub, role, iss, aud,
//     exp and a kid; the public keys are served at /.well-known/jwks.json and
//     the other services verify through them (internal/platform/auth).
//   - A saga participant: debit_credit and refund_credit arrive on
//     user.commands, and the change, the inbox row and the reply (through the
//     outbox) commit in one transaction. The credit_charges ledger makes
//     each order's debit happen at most once, a refund without a debit a
//     remembered no-op, and a debit after its refund a no-op.
//
// New users start with domain.StartingCreditCents (10000 cents, 100.00).
//
//	sequenceDiagram
//	    participant O as orderservice (saga)
//	    participant K as Kafka
//	    participant U as userservice
//	    O->>K: debit_credit {order_id, user_id, amount_cents} on user.commands
//	    K->>U: command
//	    Note over U: one transaction: lock user, charge row,<br/>balance - amount, inbox row, reply in outbox
//	    U->>K: reply SUCCESS + CreditDebited (or REJECTED "insufficient credit")
//	    K->>O: reply
//	    O-->>K: refund_credit, if a later step fails
//
// Layout (as in wild-workouts): domain/ holds the rules (no I/O), app/ the use
// cases, adapters/ Postgres and password hashing, ports/ the HTTP API and
// the saga handlers. service.go is the composition root;
// cmd/userservice/main.go runs it with the configuration of the environment
// (see Config).
package userservice
