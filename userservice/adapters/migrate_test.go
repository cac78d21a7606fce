package adapters

import (
	"context"
	"io/fs"
	"testing"
	"testing/fstest"

	"github.com/sagabox/sagabox/internal/migrate"
	"github.com/sagabox/sagabox/internal/testkit"
)

// Issue 11.7: rows written before emails were NFC-normalized are normalized
// by migration 002, and when two rows were spellings of one address the
// migration does not fail: the NFC one keeps the address.
func TestMigrationNormalizesExistingEmails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testkit.NewDatabase(t)
	first, err := fs.ReadFile(migrations, "migrations/001_users.sql")
	testkit.Must(t, err, "read 001")
	_, err = migrate.Apply(ctx, db.Pool, Component, fstest.MapFS{"m/001_users.sql": {Data: first}}, "m")
	testkit.Must(t, err, "apply 001")
	_, err = db.Pool.Exec(ctx, `INSERT INTO users (id, email, name, password_hash, role, credit_cents) VALUES
		(gen_random_uuid(), 'rene'||U&'\0301'||'@example.com', 'NFD only', 'x', 'user', 0),
		(gen_random_uuid(), 'zoe'||U&'\0308'||'@example.com', 'NFD twin', 'x', 'user', 0),
		(gen_random_uuid(), 'zo'||U&'\00eb'||'@example.com', 'NFC twin', 'x', 'user', 0),
		(gen_random_uuid(), 'ann@example.com', 'ASCII', 'x', 'user', 0)`)
	testkit.Must(t, err, "insert old rows")
	testkit.Must(t, Migrate(ctx, db.Pool), "migrate")
	users := NewUsers(db.Pool)
	for email, name := range map[string]string{"ren\u00e9@example.com": "NFD only", "zo\u00eb@example.com": "NFC twin", "ann@example.com": "ASCII"} {
		u, err := users.ByEmail(ctx, email)
		if err != nil || u.Name != name {
			t.Errorf("%q: %v %v, want %s", email, u, err, name)
		}
	}
	var notNFC int
	testkit.Must(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM users WHERE email IS NOT NFC NORMALIZED`).Scan(&notNFC), "count")
	if notNFC != 1 { // the NFD twin, left for an operator
		t.Fatalf("%d rows not in NFC, want 1 (the twin)", notNFC)
	}
}
