// Package migrate applies versioned, embedded SQL migrations to Postgres.
//
// Every sagabox component (outbox, saga, each service) keeps its migrations
// as numbered files, 001_name.sql, 002_name.sql..., embedded in its binary.
// Apply runs the ones a database has not seen yet, in order, inside one
// transaction that holds an advisory lock: several instances starting at once
// queue behind each other and the later ones find nothing left to do.
package migrate

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// lockID is the advisory lock every migration run takes. The same constant in
// every component means migrations of different components never interleave,
// which keeps the bookkeeping table simple.
const lockID int64 = 0x73616761626f78 // "sagabox"

var fileName = regexp.MustCompile(`^(\d+)_[a-z0-9_]+\.sql$`)

// Beginner is what Apply needs: *pgxpool.Pool and *pgx.Conn satisfy it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Migration is one numbered SQL file.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Load reads the migrations in dir of fsys, sorted by version. It refuses
// files that do not follow the NNN_name.sql pattern and duplicate versions, so
// a typo cannot silently skip a migration.
func Load(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("migrate: read %s: %w", dir, err)
	}
	var out []Migration
	seen := map[int]string{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migrate: %s: file name must look like 001_name.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		if prev, ok := seen[v]; ok {
			return nil, fmt.Errorf("migrate: %s and %s share version %d", prev, e.Name(), v)
		}
		seen[v] = e.Name()
		b, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("migrate: read %s: %w", e.Name(), err)
		}
		out = append(out, Migration{Version: v, Name: e.Name(), SQL: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Apply applies the migrations of component that db has not recorded yet.
// It returns the versions it applied (none when the database was current).
func Apply(ctx context.Context, db Beginner, component string, fsys fs.FS, dir string) ([]int, error) {
	migrations, err := Load(fsys, dir)
	if err != nil {
		return nil, err
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate %s: begin: %w", component, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit

	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockID); err != nil {
		return nil, fmt.Errorf("migrate %s: lock: %w", component, err)
	}
	if _, err := tx.Exec(ctx, `
CREATE SCHEMA IF NOT EXISTS sagabox;
CREATE TABLE IF NOT EXISTS sagabox.schema_migrations (
	component  text        NOT NULL,
	version    int         NOT NULL,
	name       text        NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (component, version)
)`); err != nil {
		return nil, fmt.Errorf("migrate %s: bookkeeping table: %w", component, err)
	}
	rows, err := tx.Query(ctx, `SELECT version FROM sagabox.schema_migrations WHERE component = $1`, component)
	if err != nil {
		return nil, fmt.Errorf("migrate %s: read applied versions: %w", component, err)
	}
	applied, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return nil, fmt.Errorf("migrate %s: read applied versions: %w", component, err)
	}
	done := map[int]bool{}
	for _, v := range applied {
		done[v] = true
	}
	var ran []int
	for _, m := range migrations {
		if done[m.Version] {
			continue
		}
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return nil, fmt.Errorf("migrate %s: %s: %w", component, m.Name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO sagabox.schema_migrations (component, version, name) VALUES ($1, $2, $3)`,
			component, m.Version, m.Name); err != nil {
			return nil, fmt.Errorf("migrate %s: record %s: %w", component, m.Name, err)
		}
		ran = append(ran, m.Version)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("migrate %s: commit: %w", component, err)
	}
	return ran, nil
}
