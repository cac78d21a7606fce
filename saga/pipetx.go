package saga

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pipeTx is a transaction whose BEGIN travels with its first statements
// (pgx.Batch.BeginTx) and whose COMMIT travels with its last: a
// read-then-write transaction costs two round trips instead of four. The
// orchestrator's reply batches and the participant's command batches run
// this way; on this machine a round trip costs Postgres about 30 µs of CPU,
// a commit about 100 µs (BENCHMARKS.md).
type pipeTx struct {
	conn *pgxpool.Conn
	// tx is the transaction for what runs in between (local steps,
	// handlers): a real pgx transaction, savepoints and all.
	tx pgx.Tx
}

// beginPipe acquires a connection, lets prepare run on it, and sends b,
// which must have been begun with BeginTx. It returns the results after
// BEGIN's: the caller reads the rest and closes them before using the
// transaction.
func beginPipe(ctx context.Context, pool *pgxpool.Pool, prepare func(*pgx.Conn) error, b *pgx.Batch) (*pipeTx, pgx.BatchResults, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	if prepare != nil {
		if err := prepare(conn.Conn()); err != nil {
			conn.Release()
			return nil, nil, err
		}
	}
	br := conn.SendBatch(ctx, b)
	p := &pipeTx{conn: conn, tx: br.Tx()}
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		p.abort(ctx)
		return nil, nil, err
	}
	return p, br, nil
}

// commit appends COMMIT to b and sends it with send (the transaction's
// SendBatch, or a wrapper of it). read must read the results of b's own
// statements, all of them, and may fail the transaction. The connection
// goes back to the pool either way; on an error nothing was committed.
func (p *pipeTx) commit(ctx context.Context, b *pgx.Batch, send func(context.Context, *pgx.Batch) pgx.BatchResults,
	read func(pgx.BatchResults) error) error {
	b.Queue("commit")
	br := send(ctx, b)
	err := read(br)
	if err == nil {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		if err == nil && tag.String() == "ROLLBACK" {
			err = pgx.ErrTxCommitRollback
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && p.conn.Conn().PgConn().TxStatus() != 'I' {
		err = errors.New("saga: still in a transaction after COMMIT")
	}
	if err != nil {
		p.abort(ctx)
		return err
	}
	p.conn.Release()
	return nil
}

// abort rolls the transaction back, if the connection is still in one, and
// releases the connection. A connection that cannot roll back is closed by
// pgx (and then by the pool on release).
func (p *pipeTx) abort(ctx context.Context) {
	if p.conn.Conn().PgConn().TxStatus() != 'I' {
		if err := p.tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
			_ = p.conn.Conn().Close(ctx)
		}
	}
	p.conn.Release()
}

// readAll reads n results of br, failing on the first error.
func readAll(br pgx.BatchResults, n int, what string) error {
	for range n {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("saga: %s: %w", what, err)
		}
	}
	return nil
}
