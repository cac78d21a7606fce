package outbox

import (
	"context"
	"embed"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/migrate"
)

// Beginner starts transactions: *pgxpool.Pool and *pgx.Conn satisfy it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate creates or upgrades the outbox tables (in the Postgres schema
// "sagabox"). It is safe to run from several instances at once: they take
// turns on an advisory lock and the later ones find nothing to do. Run it at
// start-up, or from the command line with `go run ./cmd/sagabox migrate`.
func Migrate(ctx context.Context, db Beginner) error {
	_, err := migrate.Apply(ctx, db, "outbox", migrations, "migrations")
	return err
}
