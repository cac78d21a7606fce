package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sagabox/sagabox/internal/testkit"
)

func TestMigrateThenStats(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	ctx := testkit.Ctx(t)
	var out bytes.Buffer
	for i := 0; i < 2; i++ { // twice: the second run finds nothing to do
		if err := run(ctx, []string{"-database-url", db.URL, "migrate"}, &out); err != nil {
			t.Fatal(err)
		}
	}
	out.Reset()
	if err := run(ctx, []string{"-database-url", db.URL, "outbox", "stats"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "pending=0 parked=0") {
		t.Fatalf("stats: %q", out.String())
	}
	if err := run(ctx, []string{"-database-url", db.URL, "outbox", "retry", "abc"}, &out); err == nil || !strings.Contains(err.Error(), "not a message ID") {
		t.Fatalf("bad ID accepted: %v", err)
	}
	if err := run(ctx, []string{"-database-url", db.URL, "outbox", "discard", "42"}, &out); err == nil {
		t.Fatal("discarding a message that is not parked should fail")
	}
}

// -h and help list every command and succeed, without a database.
func TestHelpListsEveryCommandAndSucceeds(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-h"}, {"help"}, {"-database-url", "postgres://nowhere.invalid/x", "-h"}} {
		var out bytes.Buffer
		if err := run(testkit.Ctx(t), args, &out); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, cmd := range []string{"migrate", "console", "-listen", "-auth-token", "saga list", "saga show", "saga retry", "saga abort", "-reason", "-json",
			"outbox stats", "outbox parked", "outbox retry", "outbox discard", "-database-url"} {
			if !strings.Contains(out.String(), cmd) {
				t.Errorf("%v: the usage does not list %q:\n%s", args, cmd, out.String())
			}
		}
	}
}
