package saga

import (
	"context"
	"embed"
	"io/fs"

	"github.com/sagabox/sagabox/internal/migrate"
	"github.com/sagabox/sagabox/outbox"
)

//go:embed migrations/*.sql
var embedded embed.FS

// Migrations holds the saga tables' numbered migrations (001_saga.sql,
// 002_..., and so on) at its root: the files Migrate applies, for teams
// whose schema changes go through their own tool (goose, atlas, tern...).
//
// They create, in the Postgres schema "sagabox", the tables sagas (one row
// per saga, its state and the attempt in flight), saga_steps (each
// attempt's history), saga_inbox (the messages a participant or
// orchestrator has handled, for deduplication) and saga_definitions (each
// orchestrator's definitions, written when it starts, for operator tools),
// and later files alter them.
// Orchestrators also need the outbox tables: apply outbox.Migrations too
// (in either order; neither references the other). Apply the files in
// file-name order, each once. Migrate also does what a tool must then do
// itself: it creates the schema first (CREATE SCHEMA IF NOT EXISTS
// sagabox), runs all pending files in one transaction under an advisory
// lock (so instances starting at once take turns), and records each version
// in its own table, sagabox.schema_migrations (component "saga"). With
// another tool, do not call Migrate as well, and copy a new file from
// Migrations into your migration directory when you upgrade sagabox.
var Migrations fs.FS = mustSub(embedded, "migrations")

func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

// Migrate creates or upgrades the saga tables (sagas, saga_steps and
// saga_inbox in the Postgres schema "sagabox"), applying the files of
// Migrations it has not applied yet. Several instances may run it at once.
// Orchestrators also need the outbox tables (outbox.Migrate).
func Migrate(ctx context.Context, db outbox.Beginner) error {
	_, err := migrate.Apply(ctx, db, "saga", embedded, "migrations")
	return err
}
