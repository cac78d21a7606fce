package dbpool_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/internal/platform/dbpool"
	"github.com/sagabox/sagabox/internal/testkit"
)

func TestOpenSizesThePoolAndNamesBadSettings(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	pool, err := dbpool.Open(context.Background(), db.URL, 3)
	testkit.Must(t, err, "open")
	defer pool.Close()
	if got := pool.Config().MaxConns; got != 3 {
		t.Fatalf("MaxConns = %d, want 3", got)
	}
	if _, err := dbpool.Open(context.Background(), "postgres://%zz", 3); err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Fatalf("a malformed URL should name DATABASE_URL, got %v", err)
	}
}

// Only connection failures are retried: a query error, a missing row or a
// cancelled request are answered as they are.
func TestIsConnectionErrorTellsConnectionsFromQueries(t *testing.T) {
	t.Parallel()
	for err, want := range map[error]bool{
		&pgconn.PgError{Code: "57P01"}:                    true, // terminating connection due to administrator command
		&pgconn.PgError{Code: "08006"}:                    true,
		fmt.Errorf("read: %w", io.ErrUnexpectedEOF):       true,
		&pgconn.PgError{Code: "23505"}:                    false,
		&pgconn.PgError{Code: "22021"}:                    false,
		pgx.ErrNoRows:                                     false,
		fmt.Errorf("query: %w", context.Canceled):         false,
		fmt.Errorf("query: %w", context.DeadlineExceeded): false,
	} {
		if got := dbpool.IsConnectionError(err); got != want {
			t.Errorf("IsConnectionError(%v) = %v, want %v", err, got, want)
		}
	}
}
