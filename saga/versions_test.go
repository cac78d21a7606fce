package saga_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// stepNames are the names of a saga's attempts, in order.
func (w *world) stepNames(id string) ([]string, int) {
	w.t.Helper()
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(id))
	testkit.Must(w.t, err, "get %s", id)
	var names []string
	for _, a := range info.History {
		names = append(names, a.Name)
	}
	return names, info.DefinitionVersion
}

// Invariant: a saga finishes on the steps of the definition version it
// started with, while a newer version starts the new sagas, and nothing is
// lost across the upgrade.
func TestOrchestratorRunsEachSagaOnTheVersionItStartedWith(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 100, "ann", 1000)
	v1 := orderDefinition(tuning{Version: 1, NoDebit: true}) // reserve, approve
	v2 := orderDefinition(tuning{Version: 2})                // reserve, debit, approve

	// Sagas started by the old deployment, whose orchestrator then stops
	// before any reply (the participants are not running yet).
	old := w.orchestrator(v1, nil)
	var oldIDs []string
	for i := range 5 {
		oldIDs = append(oldIDs, w.placeOrder(old, order{OrderID: fmt.Sprintf("v1-%d", i), Item: "book", Qty: 1, User: "ann", Amount: 10}))
	}

	// The new deployment registers both versions.
	both := w.orchestrator(v2, nil, v1)
	if got := both.Definition().Version(); got != 2 {
		t.Fatalf("new sagas would start on version %d, want 2", got)
	}
	w.startOrchestrator(both)
	w.runParticipants("g")
	var newIDs []string
	for i := range 5 {
		newIDs = append(newIDs, w.placeOrder(both, order{OrderID: fmt.Sprintf("v2-%d", i), Item: "book", Qty: 1, User: "ann", Amount: 10}))
	}

	statuses := w.waitFinished(append(slices.Clone(oldIDs), newIDs...), time.Minute)
	eff := w.effects()
	check := func(ids []string, version int, steps, effects []string) {
		for _, id := range ids {
			names, v := w.stepNames(id)
			if statuses[id] != saga.StatusSucceeded || v != version || !slices.Equal(names, steps) || !slices.Equal(eff[id], effects) {
				t.Errorf("saga %s: %s on version %d, steps %v, effects %v; want succeeded on version %d, steps %v, effects %v",
					id, statuses[id], v, names, eff[id], version, steps, effects)
			}
		}
	}
	check(oldIDs, 1, []string{"reserve_stock", "approve_order"}, []string{"reserve"})
	check(newIDs, 2, []string{"reserve_stock", "debit_credit", "approve_order"}, []string{"reserve", "debit"})
	var stock, balance int
	testkit.Must(t, w.pool.QueryRow(w.ctx, `SELECT (SELECT qty FROM stock), (SELECT balance FROM credit)`).Scan(&stock, &balance), "totals")
	if stock != 90 || balance != 950 {
		t.Fatalf("stock %d, balance %d; want 90 (ten reserved) and 950 (five debited)", stock, balance)
	}
}

// Invariant: a saga whose version an orchestrator does not have is
// reported and left alone, never run on another version's steps, and is
// carried on, losing nothing, once an orchestrator with its version runs.
func TestASagaOfAnUnregisteredVersionIsReportedNotRun(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.seed("book", 100, "ann", 1000)
	tn := tuning{Timeout: 2 * time.Second, Attempts: 10}
	v1 := orderDefinition(tuning{Timeout: tn.Timeout, Attempts: tn.Attempts, Version: 1, NoDebit: true})
	v2 := orderDefinition(tuning{Timeout: tn.Timeout, Attempts: tn.Attempts, Version: 2})

	id := w.placeOrder(w.orchestrator(v1, nil), order{OrderID: "o1", Item: "book", Qty: 1, User: "ann", Amount: 10})
	reg := prometheus.NewRegistry()
	onlyV2 := w.orchestrator(v2, func(_ *saga.Config, rt *testRuntime) { rt.registerer = reg })
	stop := w.startOrchestrator(onlyV2)
	w.runParticipants("g")

	// The participant answers; the v2-only orchestrator must not apply it.
	testkit.Eventually(t, time.Minute, "the unknown version to be reported", func() bool {
		return counter(t, reg, "sagabox_saga_unknown_version_total", nil) >= 1
	})
	info, err := saga.NewAdmin(w.pool).Get(w.ctx, uuid.MustParse(id))
	testkit.Must(t, err, "get")
	if info.Status != saga.StatusRunning || info.Step != 0 || !strings.Contains(info.LastError, "version 1") {
		t.Fatalf("saga after the reply: %s at step %d, last error %q; want running at step 0, naming version 1", info.Status, info.Step, info.LastError)
	}
	if err := onlyV2.Retry(w.ctx, uuid.MustParse(id)); !errors.Is(err, saga.ErrUnknownVersion) {
		t.Fatalf("the v2-only orchestrator's Retry of a v1 saga: %v, want ErrUnknownVersion", err)
	}
	stop()

	// The deployment that has version 1: the step's deadline re-asks, the
	// participant's inbox answers again, and the saga ends on v1's steps.
	w.startOrchestrator(w.orchestrator(v2, nil, v1))
	if st := w.waitFinished([]string{id}, time.Minute)[id]; st != saga.StatusSucceeded {
		t.Fatalf("saga %s, want succeeded", st)
	}
	names, v := w.stepNames(id)
	if v != 1 || !slices.Contains(names, "approve_order") || slices.Contains(names, "debit_credit") {
		t.Fatalf("version %d, steps %v: want version 1's steps, no debit_credit", v, names)
	}
	if e := w.effects()[id]; !slices.Equal(e, []string{"reserve"}) {
		t.Fatalf("effects %v, want one reserve", e)
	}
}

func TestNewOrchestratorRefusesMixedDefinitions(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 0)
	v3 := orderDefinition(tuning{})
	other := saga.MustDefinition("other", 1, saga.Step[order]{Name: "x", Invoke: &saga.Invocation[order]{Topic: "t", Command: "x"}})
	rt := w.runtime(nil)
	for name, defs := range map[string][]*saga.Definition[order]{
		"none":             nil,
		"a nil definition": {v3, nil},
		"two saga types":   {v3, other},
		"a version twice":  {v3, orderDefinition(tuning{})},
	} {
		if _, err := saga.NewOrchestrator(rt, w.orchestratorConfig(), defs...); err == nil || !strings.Contains(err.Error(), "invalid config") {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	for name, mod := range map[string]func(*saga.Config){
		"no reply topic":     func(c *saga.Config) { c.ReplyTopic = "" },
		"negative retention": func(c *saga.Config) { c.Retention = -time.Second },
		"negative batch":     func(c *saga.Config) { c.ReplyBatch = -1 },
	} {
		cfg := w.orchestratorConfig()
		mod(&cfg)
		if _, err := saga.NewOrchestrator(rt, cfg, v3); err == nil || !strings.Contains(err.Error(), "invalid config") {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
}

// Invariant: a second Run is refused, and every labelled series exists at
// 0 before anything happened.
func TestOrchestratorRunsOnceAndItsSeriesStartAtZero(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 1)
	reg := prometheus.NewRegistry()
	mod := func(_ *saga.Config, rt *testRuntime) { rt.registerer = reg }
	o := w.orchestrator(orderDefinition(tuning{}), mod)
	w.orchestrator(orderDefinition(tuning{}), mod) // a second one on the same registerer
	mfs, err := reg.Gather()
	testkit.Must(t, err, "gather")
	series := map[string]int{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetCounter().GetValue() == 0 {
				series[mf.GetName()]++
			}
		}
	}
	// One series per final status, and one each for the unlabelled-by-
	// outcome counters, all present at 0 before any saga.
	for name, want := range map[string]int{"sagabox_saga_finished_total": 3, "sagabox_saga_started_total": 1,
		"sagabox_saga_replies_ignored_total": 1, "sagabox_saga_unknown_version_total": 1} {
		if series[name] != want {
			t.Errorf("%s: %d series at 0 before any saga, want %d", name, series[name], want)
		}
	}
	// Two Runs at once: one runs, the other is refused.
	ctx, cancel := context.WithCancel(w.ctx)
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- o.Run(ctx) }()
	}
	if err := <-errs; err == nil {
		t.Fatal("one of two Runs of one orchestrator returned nil while the other runs")
	}
	cancel()
	testkit.Must(t, <-errs, "the Run that ran")
	if err := o.Run(w.ctx); err == nil {
		t.Fatal("a Run after the first returned was accepted")
	}
}
