// Package dbpool opens a service's Postgres pool from its configuration.
package dbpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Open connects a pool of at most maxConns connections to databaseURL. Its
// errors name the setting to fix (DATABASE_URL) or say the connection
// failed.
func Open(ctx context.Context, databaseURL string, maxConns int) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	if maxConns > 0 {
		pc.MaxConns = int32(maxConns)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return pool, nil
}

// ReadRetry runs the idempotent read fn, and when it fails with a connection
// error (IsConnectionError: the server terminated the pooled connection, a
// restart, a failover) runs it once more after discarding the pool's
// connections, which the same event most likely broke too (pgxpool.Reset).
// Only reads: a write whose connection broke may have committed.
func ReadRetry[T any](ctx context.Context, pool *pgxpool.Pool, fn func(context.Context) (T, error)) (T, error) {
	v, err := fn(ctx)
	if err == nil || !IsConnectionError(err) || ctx.Err() != nil {
		return v, err
	}
	pool.Reset()
	return fn(ctx)
}

// IsConnectionError reports whether err means the connection, not the
// query, failed: a pgconn error before anything was sent, a connection
// exception (SQLSTATE class 08), an administrator or crash shutdown
// (57P01-57P03), or the socket closing under the client.
func IsConnectionError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if pgconn.SafeToRetry(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	}
	var netErr net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.As(err, &netErr)
}
