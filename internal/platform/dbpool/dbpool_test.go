package dbpool_test

import (
	"context"
	"strings"
	"testing"

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
