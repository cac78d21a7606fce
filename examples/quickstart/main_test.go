package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sagabox/sagabox/internal/testkit"
)

// The quickstart runs to its end on a fresh database and says so last.
func TestQuickstartRunsToOK(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	var out bytes.Buffer
	if err := run(testkit.Ctx(t), db.URL, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if lines[len(lines)-1] != "quickstart: ok" {
		t.Fatalf("last line %q, want quickstart: ok\n%s", lines[len(lines)-1], out.String())
	}
	for _, want := range []string{"participant: issue_stamp", "saga: step 0 issue_stamp attempt 1: succeeded",
		"saga: step 1 store_stamp attempt 1: succeeded", "saga: succeeded", "has stamp 1001"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
