package orderservice_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/testkit"
)

// scrape returns a service's /metrics exposition.
func scrape(t *testing.T, base string) string {
	t.Helper()
	res, err := http.Get(base + "/metrics")
	testkit.Must(t, err, "GET %s/metrics", base)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	testkit.Must(t, err, "read metrics")
	if res.StatusCode != 200 {
		t.Fatalf("GET %s/metrics: %d %s", base, res.StatusCode, b)
	}
	return string(b)
}

// Metrics that alert well: before the shop has handled anything, every
// labelled series an alert rule in the README uses exists at 0 (an alert
// reads 0, not "no data"), and each service's exposition passes
// `promtool check metrics` (naming, help, units). promtool comes with
// Debian's prometheus package (.ci/run installs it); without it the
// promtool half is skipped, except under CI=true, where it fails.
func TestMetricsExpositionOfTheThreeServices(t *testing.T) {
	t.Parallel()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	s := startShop(t, ctx)
	want := map[string][]string{
		s.orders: {
			`sagabox_saga_started_total{saga_type="order"} 0`,
			`sagabox_saga_finished_total{saga_type="order",status="failed"} 0`,
			`sagabox_saga_finished_total{saga_type="order",status="compensated"} 0`,
			`sagabox_saga_late_replies_total{disposition="recorded",saga_type="order"} 0`,
			`sagabox_saga_dead_letters_total{consumer="saga_replies_order"} 0`,
			`sagabox_saga_consumed_total{consumer="saga_replies_order",result="retry"} 0`,
			`sagabox_outbox_failed_total{outcome="parked"} 0`,
			`sagabox_outbox_failed_total{outcome="retry"} 0`,
			`sagabox_outbox_published_total{topic="order.events"} 0`,
			`sagabox_outbox_parked_messages 0`,
			`sagabox_outbox_oldest_pending_age_seconds`,
		},
		s.catalog: {
			`sagabox_saga_commands_total{command="reserve_stock",outcome="failed",participant="catalogservice"} 0`,
			`sagabox_saga_commands_total{command="release_stock",outcome="succeeded",participant="catalogservice"} 0`,
			`sagabox_saga_command_duplicates_total{command="reserve_stock",participant="catalogservice"} 0`,
			`sagabox_saga_dead_letters_total{consumer="saga_commands_catalogservice"} 0`,
			`sagabox_saga_events_total{consumer="consumer_catalogservice-order-view",outcome="failed"} 0`,
			`sagabox_saga_dead_letters_total{consumer="consumer_catalogservice-order-view"} 0`,
		},
		s.users: {
			`sagabox_saga_commands_total{command="debit_credit",outcome="rejected",participant="userservice"} 0`,
			`sagabox_saga_commands_total{command="unknown",outcome="rejected",participant="userservice"} 0`,
			`sagabox_saga_dead_letters_total{consumer="saga_commands_userservice"} 0`,
		},
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil && os.Getenv("CI") == "true" {
		t.Fatal("promtool is not on PATH under CI=true: .ci/run installs Debian's prometheus package for it")
	}
	for base, series := range want {
		exp := scrape(t, base)
		for _, w := range series {
			if !strings.Contains(exp, "\n"+w) {
				t.Errorf("%s/metrics lacks %s", base, w)
			}
		}
		if promtool == "" {
			continue
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(exp)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Errorf("promtool check metrics on %s/metrics: %v\n%s", base, err, out.String())
		}
	}
	if promtool == "" {
		t.Log("promtool is not on PATH: exposition not checked (install Debian's prometheus package)")
	} else {
		checkREADMERules(t, promtool)
	}

	// One approved order moves the counters it should.
	if st, body := call(t, "POST", s.catalog+"/products", s.admin, map[string]any{"sku": "TEA-1", "name": "Tea", "price": 450, "stock": 10}); st != 201 {
		t.Fatalf("add product: %d %v", st, body)
	}
	_, token := s.customer(t, "ann@example.com")
	if o := s.order(t, token, line("TEA-1", 1)); o["status"] != "APPROVED" {
		t.Fatalf("order: %v", o)
	}
	moved := map[string][]string{
		s.orders: {`sagabox_saga_finished_total{saga_type="order",status="succeeded"} 1`,
			`sagabox_saga_consumed_total{consumer="saga_replies_order",result="ok"} 2`},
		s.catalog: {`sagabox_saga_commands_total{command="reserve_stock",outcome="succeeded",participant="catalogservice"} 1`,
			`sagabox_saga_command_handler_duration_seconds_count{command="reserve_stock",participant="catalogservice"} 1`,
			`sagabox_saga_events_total{consumer="consumer_catalogservice-order-view",outcome="handled"} 2`},
		s.users: {`sagabox_saga_commands_total{command="debit_credit",outcome="succeeded",participant="userservice"} 1`},
	}
	for base, series := range moved {
		for _, w := range series {
			testkit.Eventually(t, 30*time.Second, base+" to show "+w, func() bool { return strings.Contains(scrape(t, base), "\n"+w) })
		}
	}
	stop()
	s.stopped(t)
}

// checkREADMERules runs `promtool check rules` on the README's example
// alert rules, so that the documentation cannot rot.
func checkREADMERules(t *testing.T, promtool string) {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	testkit.Must(t, err, "read README.md")
	_, rest, ok := strings.Cut(string(readme), "```yaml\ngroups:")
	rules, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("README.md has no ```yaml block of alert rules starting with groups:")
	}
	f := t.TempDir() + "/rules.yml"
	testkit.Must(t, os.WriteFile(f, []byte("groups:"+rules), 0o600), "write rules")
	if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the README's alert rules: %v\n%s", err, out)
	}
}
