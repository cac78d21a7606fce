package saga

import (
	"context"
	"embed"

	"github.com/sagabox/sagabox/internal/migrate"
	"github.com/sagabox/sagabox/outbox"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate creates or upgrades the saga tables (sagas, saga_steps and
// saga_inbox in the Postgres schema "sagabox"). Several instances may run it
// at once. Orchestrators also need the outbox tables (outbox.Migrate).
func Migrate(ctx context.Context, db outbox.Beginner) error {
	_, err := migrate.Apply(ctx, db, "saga", migrations, "migrations")
	return err
}
