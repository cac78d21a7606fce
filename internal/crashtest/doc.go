// Package crashtest holds the crash test (crash_test.go): the shop's three
// services built from their cmd/ mains and run as separate OS processes
// against a broker process (cmd/devbroker), under load, while the test
// SIGKILLs and restarts each service, freezes userservice with SIGSTOP for
// longer than the debit step's whole retry budget, and terminates each
// service's database connections with pg_terminate_backend. Once the faults
// stop it waits for the shop to settle and checks, naming each invariant:
//
//   - every accepted order is final (APPROVED or CANCELLED, its saga
//     finished);
//   - stock and credit are conserved per product and per user: stock is
//     taken, and credit debited, for approved orders only, and exactly
//     their amounts;
//   - no effect is applied twice: the balances moved by exactly what the
//     participants' ledgers (reservations, charges) record;
//   - the catalog's order view agrees with each order;
//   - the three outboxes drain (sagabox.outbox is empty).
//
// It takes a few minutes, so `make test` skips it: run `make test-crash`
// (SAGABOX_CRASH=1). SAGABOX_CRASH_SIGSTOP=0 leaves out the SIGSTOP phase
// and gives the steps a retry budget the other faults fit in;
// SAGABOX_CRASH_LOGS=dir keeps the processes' logs there.
package crashtest
