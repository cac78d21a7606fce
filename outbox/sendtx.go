package outbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SendTx runs b as one transaction in one round trip: BEGIN, b's
// statements and COMMIT travel together. b must not be begun yet (SendTx
// calls b.BeginTx), nor hold a COMMIT of its own. It is for a business
// transaction that needs no answer from the database before it commits,
// such as an insert with its outbox messages queued with Writer.Queue, or
// a saga started with saga.Orchestrator.Queue: one round trip instead of
// the three of BEGIN, the statements and COMMIT (see BENCHMARKS.md).
//
// If any statement fails, the rest, COMMIT included, is skipped, the
// transaction is rolled back and SendTx returns the error: nothing was
// written. Callbacks set on b's queued queries (QueuedQuery.Exec and the
// like) run as with any batch.
func SendTx(ctx context.Context, pool *pgxpool.Pool, b *pgx.Batch) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("outbox: SendTx: %w", err)
	}
	defer conn.Release() // a connection left in a transaction is closed by the pool
	all := &pgx.Batch{}
	all.BeginTx(pgx.TxOptions{})
	all.QueuedQueries = append(all.QueuedQueries, b.QueuedQueries...)
	all.Queue("commit")
	br := conn.SendBatch(ctx, all)
	err = br.Close()
	if conn.Conn().PgConn().TxStatus() != 'I' {
		if _, rbErr := conn.Exec(ctx, "rollback"); rbErr != nil {
			err = errors.Join(err, rbErr)
		}
		if err == nil {
			err = errors.New("outbox: SendTx: the transaction was still open after COMMIT")
		}
	}
	return err
}
