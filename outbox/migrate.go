package outbox

import (
	"context"
	"embed"
	"io/fs"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/migrate"
)

// Beginner starts transactions: *pgxpool.Pool and *pgx.Conn satisfy it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

//go:embed migrations/*.sql
var embedded embed.FS

// Migrations holds the outbox's numbered migrations, 001_outbox.sql and the
// ones after it, at its root: the files Migrate applies, for teams whose
// schema changes go through their own tool (goose, atlas, tern, Flyway...).
//
// They create, in the Postgres schema "sagabox", the tables outbox
// (messages still to publish), outbox_archive (published messages, when
// RelayConfig.ArchiveFor is set), outbox_schemas (the Avro schemas writers
// encoded with), outbox_relays and outbox_leases (which relay publishes
// which shard). Apply them in file-name order, each once. Migrate also does
// what a tool must then do itself: it creates the schema first (CREATE
// SCHEMA IF NOT EXISTS sagabox), runs all pending files in one transaction
// under an advisory lock (so instances starting at once take turns), and
// records each version in its own table, sagabox.schema_migrations
// (component "outbox"). With another tool, do not call Migrate as well:
// keep the versions in the tool's table alone, and copy a new file from
// Migrations into your migration directory when you upgrade sagabox. The
// files hold plain SQL without tool annotations: tern and atlas take them
// as they are, goose wants a "-- +goose Up" line added at the top.
var Migrations fs.FS = mustSub(embedded, "migrations")

func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

// Migrate creates or upgrades the outbox tables (in the Postgres schema
// "sagabox"), applying the files of Migrations it has not applied yet. It is
// safe to run from several instances at once: they take turns on an
// advisory lock and the later ones find nothing to do. Run it at start-up,
// or from the command line with `go run ./cmd/sagabox migrate`.
func Migrate(ctx context.Context, db Beginner) error {
	_, err := migrate.Apply(ctx, db, "outbox", embedded, "migrations")
	return err
}
