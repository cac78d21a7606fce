package userservice_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/userservice/domain"
)

// inTx runs one credit command in its own transaction and commits it, as
// the saga participant will (with its inbox row in the same transaction).
func (b bundle) inTx(t *testing.T, fn func(ctx context.Context, tx pgx.Tx) (domain.Outcome, error)) domain.Outcome {
	t.Helper()
	var out domain.Outcome
	err := pgx.BeginFunc(context.Background(), b.db.Pool, func(tx pgx.Tx) error {
		var err error
		out, err = fn(context.Background(), tx)
		return err
	})
	testkit.Must(t, err, "credit command")
	return out
}

func (b bundle) debit(t *testing.T, order, user string, amount int64) domain.Outcome {
	return b.inTx(t, func(ctx context.Context, tx pgx.Tx) (domain.Outcome, error) {
		return b.svc.App().DebitCredit(ctx, tx, order, user, amount)
	})
}

func (b bundle) refund(t *testing.T, order, user string, amount int64) domain.Outcome {
	return b.inTx(t, func(ctx context.Context, tx pgx.Tx) (domain.Outcome, error) {
		return b.svc.App().RefundCredit(ctx, tx, order, user, amount)
	})
}

func (b bundle) balance(t *testing.T, user string) int64 {
	t.Helper()
	var c int64
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `SELECT credit_cents FROM users WHERE id = $1`, user).Scan(&c), "balance")
	return c
}

// PITFALLS.md 19: duplicates, refunds without debits and debits after their
// refund each have at most one effect, against the real database.
func TestCreditCommandsAreIdempotentPerOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	u := b.signUp(t, "ann@example.com")
	o1, o2, o3 := uuid.NewString(), uuid.NewString(), uuid.NewString()

	if out := b.debit(t, o1, u, 3000); !out.OK || out.BalanceCents != 7000 {
		t.Fatalf("debit: %+v", out)
	}
	if out := b.debit(t, o1, u, 3000); !out.OK || out.Changed || b.balance(t, u) != 7000 {
		t.Fatalf("duplicate debit: %+v, balance %d", out, b.balance(t, u))
	}
	if out := b.refund(t, o1, u, 3000); !out.OK || !out.Changed || b.balance(t, u) != 10000 {
		t.Fatalf("refund: %+v, balance %d", out, b.balance(t, u))
	}
	if out := b.refund(t, o1, u, 3000); out.Changed || b.balance(t, u) != 10000 {
		t.Fatalf("duplicate refund: %+v, balance %d", out, b.balance(t, u))
	}
	if out := b.debit(t, o1, u, 3000); out.OK || b.balance(t, u) != 10000 {
		t.Fatalf("debit after its refund: %+v, balance %d", out, b.balance(t, u))
	}

	if out := b.refund(t, o2, u, 500); !out.OK || b.balance(t, u) != 10000 {
		t.Fatalf("refund without debit: %+v, balance %d", out, b.balance(t, u))
	}
	if out := b.debit(t, o2, u, 500); out.OK || b.balance(t, u) != 10000 {
		t.Fatalf("debit arriving after its refund: %+v, balance %d", out, b.balance(t, u))
	}

	if out := b.debit(t, o3, u, 10001); out.OK || out.Reason != domain.ErrInsufficientCredit.Error() || b.balance(t, u) != 10000 {
		t.Fatalf("insufficient: %+v", out)
	}
	// The refusal is remembered: spending less elsewhere does not turn a
	// redelivered refused debit into a charge for a cancelled order.
	if out := b.debit(t, o3, u, 10001); out.OK {
		t.Fatalf("duplicate of a refused debit accepted: %+v", out)
	}
	if out := b.debit(t, uuid.NewString(), uuid.NewString(), 100); out.OK || out.Reason != domain.ErrUserNotFound.Error() {
		t.Fatalf("unknown user: %+v", out)
	}
	if out := b.debit(t, uuid.NewString(), u, -5); out.OK || b.balance(t, u) != 10000 {
		t.Fatalf("negative amount: %+v", out)
	}
}

// Concurrent debits never overdraw and duplicates racing each other count
// once: 30 orders of 1000 against 10000 of credit, each delivered 3 times at
// once, give exactly 10 debits.
func TestConcurrentDebitsNeverOverdraw(t *testing.T) {
	t.Parallel()
	b := setup(t)
	u := b.signUp(t, "rich@example.com")
	var changed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 90)
	for i := range 30 {
		order := fmt.Sprintf("order-%02d", i)
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := pgx.BeginFunc(context.Background(), b.db.Pool, func(tx pgx.Tx) error {
					out, err := b.svc.App().DebitCredit(context.Background(), tx, order, u, 1000)
					if err == nil && out.OK && out.Changed {
						changed.Add(1)
					}
					return err
				})
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("debit failed: %v", err)
	}
	var debited int64
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM credit_charges WHERE status = 'DEBITED'`).Scan(&debited), "count")
	if debited != 10 || changed.Load() != 10 || b.balance(t, u) != 0 {
		t.Fatalf("debited orders %d, debits applied %d, balance %d; want 10, 10, 0", debited, changed.Load(), b.balance(t, u))
	}
}
