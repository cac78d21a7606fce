package migrate_test

import (
	"sync"
	"testing"
	"testing/fstest"

	"github.com/sagabox/sagabox/internal/migrate"
	"github.com/sagabox/sagabox/internal/testkit"
)

var files = fstest.MapFS{
	"m/001_create.sql": {Data: []byte(`CREATE TABLE t (id int)`)},
	"m/002_insert.sql": {Data: []byte(`INSERT INTO t VALUES (1)`)},
}

// Instances starting together apply each migration exactly once.
func TestApplyFromManyInstancesAtOnceRunsEachMigrationOnce(t *testing.T) {
	t.Parallel()
	pool := testkit.DB(t)
	ctx := testkit.Ctx(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ran := 0
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := migrate.Apply(ctx, pool, "test", files, "m")
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			ran += len(v)
			mu.Unlock()
		}()
	}
	wg.Wait()
	var n int
	testkit.Must(t, pool.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n), "count")
	if ran != 2 || n != 1 {
		t.Fatalf("migrations ran %d times in total, table has %d rows", ran, n)
	}
}

func TestLoadRefusesBadNamesAndDuplicateVersions(t *testing.T) {
	t.Parallel()
	for name, fs := range map[string]fstest.MapFS{
		"bad name":  {"m/1-create.sql": {Data: []byte("SELECT 1")}},
		"duplicate": {"m/001_a.sql": {Data: []byte("SELECT 1")}, "m/001_b.sql": {Data: []byte("SELECT 1")}},
	} {
		if _, err := migrate.Load(fs, "m"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A failing migration leaves nothing behind: not its own changes, not the
// ones before it in the same run.
func TestApplyIsAllOrNothing(t *testing.T) {
	t.Parallel()
	pool := testkit.DB(t)
	ctx := testkit.Ctx(t)
	bad := fstest.MapFS{
		"m/001_ok.sql":  {Data: []byte(`CREATE TABLE ok (id int)`)},
		"m/002_bad.sql": {Data: []byte(`CREATE TABLE nope (`)},
	}
	if _, err := migrate.Apply(ctx, pool, "test", bad, "m"); err == nil {
		t.Fatal("broken migration applied")
	}
	var exists bool
	testkit.Must(t, pool.QueryRow(ctx, `SELECT to_regclass('ok') IS NOT NULL`).Scan(&exists), "check")
	if exists {
		t.Fatal("the first migration stayed although the run failed")
	}
}
