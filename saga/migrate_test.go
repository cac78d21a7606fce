package saga_test

import (
	"io/fs"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// Migrations is what Migrate applies: the same files, in the same order.
func TestMigrationsListTheFilesMigrateApplies(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	ctx := testkit.Ctx(t)
	testkit.Must(t, saga.Migrate(ctx, db.Pool), "migrate")
	entries, err := fs.ReadDir(saga.Migrations, ".")
	testkit.Must(t, err, "read Migrations")
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	rows, err := db.Pool.Query(ctx, `SELECT name FROM sagabox.schema_migrations WHERE component = 'saga' ORDER BY version`)
	testkit.Must(t, err, "applied")
	applied, err := pgx.CollectRows(rows, pgx.RowTo[string])
	testkit.Must(t, err, "applied")
	if len(files) < 3 || !slices.Equal(files, applied) {
		t.Fatalf("Migrations lists %v, Migrate applied %v", files, applied)
	}
}
