package outbox_test

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/riferrei/srclient"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

// metricValue returns the value of the series of name with the given label
// pairs in reg, and whether that series exists.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	testkit.Must(t, err, "gather")
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue(), true
				case m.Gauge != nil:
					return m.Gauge.GetValue(), true
				}
			}
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == pairs[i] && l.GetValue() == pairs[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func validRelayConfig(rb *relayBundle) outbox.RelayConfig {
	return outbox.RelayConfig{Pool: rb.pool, Brokers: rb.brokers, Registry: srclient.NewSchemaRegistryClient(rb.registry.URL())}
}

// Config errors wrap ErrInvalidConfig and name the field; zero is the
// documented default and a negative value is refused.
func TestRelayAndWriterConfigErrorsNameTheField(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	cases := map[string]func(*outbox.RelayConfig){
		"Pool":            func(c *outbox.RelayConfig) { c.Pool = nil },
		"Brokers":         func(c *outbox.RelayConfig) { c.Brokers = nil },
		"Registry":        func(c *outbox.RelayConfig) { c.Registry = nil },
		"BatchSize":       func(c *outbox.RelayConfig) { c.BatchSize = -1 },
		"Workers":         func(c *outbox.RelayConfig) { c.Workers = -1 },
		"PollInterval":    func(c *outbox.RelayConfig) { c.PollInterval = -time.Second },
		"ArchiveFor":      func(c *outbox.RelayConfig) { c.ArchiveFor = -time.Hour },
		"CleanupInterval": func(c *outbox.RelayConfig) { c.CleanupInterval = -time.Second },
		"VacuumAfter":     func(c *outbox.RelayConfig) { c.VacuumAfter = -1 },
		"MaxRetryBackoff": func(c *outbox.RelayConfig) { c.RetryBackoff = time.Minute; c.MaxRetryBackoff = time.Second },
		"LeaseTTL":        func(c *outbox.RelayConfig) { c.LeaseTTL = time.Second; c.ProduceTimeout = time.Second },
	}
	for field, mod := range cases {
		cfg := validRelayConfig(rb)
		mod(&cfg)
		_, err := outbox.NewRelay(cfg)
		if !errors.Is(err, outbox.ErrInvalidConfig) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: want ErrInvalidConfig naming the field, got %v", field, err)
		}
	}
	if _, err := outbox.NewRelay(validRelayConfig(rb)); err != nil {
		t.Fatalf("zero values are the defaults: %v", err)
	}
	d := outbox.RelayConfig{}.WithDefaults()
	if d.BatchSize != outbox.DefaultBatchSize || d.Workers != outbox.DefaultWorkers || d.VacuumAfter != outbox.DefaultVacuumAfter ||
		d.CleanupInterval != outbox.DefaultCleanupInterval || d.ArchiveFor != 0 || d.ID == "" || d.Logger == nil {
		t.Fatalf("WithDefaults left a default out: %+v", d)
	}
	if _, err := outbox.NewWriter(outbox.WriterConfig{}); !errors.Is(err, outbox.ErrInvalidConfig) || !strings.Contains(err.Error(), "WriterConfig.Codec") {
		t.Fatalf("writer without codec: %v", err)
	}
}

// Two relays on one registerer share the collectors (no panic, no error),
// and every series whose labels are known is there at 0 before anything
// happened.
func TestRelaysShareOneRegistererAndSeriesStartAtZero(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	reg := prometheus.NewRegistry()
	for i := range 2 {
		cfg := validRelayConfig(rb)
		cfg.Registerer = reg
		if _, err := outbox.NewRelay(cfg); err != nil {
			t.Fatalf("relay %d on the same registerer: %v", i, err)
		}
	}
	for _, outcome := range []string{"retry", "parked"} {
		if v, ok := metricValue(t, reg, "sagabox_outbox_failed_total", "outcome", outcome); !ok || v != 0 {
			t.Errorf("sagabox_outbox_failed_total{outcome=%q} = %v, present %v; want present at 0", outcome, v, ok)
		}
	}
	for _, name := range []string{"sagabox_outbox_pending_messages", "sagabox_outbox_parked_messages",
		"sagabox_outbox_owned_shards", "sagabox_outbox_vacuums_total"} {
		if _, ok := metricValue(t, reg, name); !ok {
			t.Errorf("%s missing", name)
		}
	}
	// A different collector under one of our names is a real conflict: an
	// error, not a panic.
	other := prometheus.NewRegistry()
	other.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "sagabox_outbox_published_total", Help: "not ours"}))
	cfg := validRelayConfig(rb)
	cfg.Registerer = other
	if _, err := outbox.NewRelay(cfg); err == nil {
		t.Fatal("a conflicting collector was not reported")
	}
}

// NewWriter does no I/O: a writer whose StoreSchemas was never called
// stores the schemas its messages use with the messages, so the relay can
// frame them. Nothing waits for a schema nobody stored, on any write path.
func TestWriterThatNeverStoredSchemasStillGetsItsMessagesPublished(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 2)
	ctx := testkit.Ctx(t)
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: outbox.MustCodec(orderPlacedSchema, `{"type":"record","name":"Note","namespace":"test",
		"fields":[{"name":"text","type":"string"}]}`)})
	testkit.Must(t, err, "writer")
	// The bundle's writer stored its schema at set-up; start from none.
	_, err = rb.pool.Exec(ctx, `DELETE FROM sagabox.outbox_schemas`)
	testkit.Must(t, err, "clear schemas")

	msg := func(key string) outbox.Message {
		return outbox.Message{Topic: "orders", Key: key, Type: orderPlacedType, Value: orderPlaced{OrderID: key}}
	}
	testkit.Must(t, w.Write(ctx, rb.pool, msg("keyed")), "one keyed")
	testkit.Must(t, w.Write(ctx, rb.pool, outbox.Message{Topic: "orders", Type: orderPlacedType, Value: orderPlaced{OrderID: "keyless"}}), "one keyless")
	testkit.Must(t, w.Write(ctx, rb.pool, msg("many"), msg("many"),
		outbox.Message{Topic: "orders", Key: "many", Type: "test.Note", Value: map[string]any{"text": "hi"}}), "several, two schemas")
	b := &pgx.Batch{}
	testkit.Must(t, w.Queue(ctx, b, msg("queued")), "queue")
	testkit.Must(t, outbox.SendTx(ctx, rb.pool, b), "send")
	// Concurrent first writes of the same schema do not conflict.
	errs := make(chan error, 8)
	for i := range 8 {
		go func() {
			errs <- pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error { return w.Write(ctx, tx, msg("c"+string(rune('a'+i)))) })
		}()
	}
	for range 8 {
		testkit.Must(t, <-errs, "concurrent write")
	}

	var stored int
	testkit.Must(t, rb.pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.outbox_schemas`).Scan(&stored), "count schemas")
	if stored != 2 {
		t.Fatalf("%d schema rows stored, want the 2 used", stored)
	}
	rb.startRelay(t, nil)
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 14, 20*time.Second); len(recs) != 14 {
		t.Fatalf("read %d of 14 messages", len(recs))
	}
	testkit.Eventually(t, 5*time.Second, "none pending", func() bool { return pendingCount(t, rb) == 0 })

	// StoreSchemas stores the codec's schemas; later writes still work.
	_, err = rb.pool.Exec(ctx, `DELETE FROM sagabox.outbox_schemas`)
	testkit.Must(t, err, "clear schemas")
	testkit.Must(t, w.StoreSchemas(ctx, rb.pool), "store schemas")
	testkit.Must(t, w.StoreSchemas(ctx, rb.pool), "store schemas again")
	testkit.Must(t, rb.pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.outbox_schemas`).Scan(&stored), "count schemas")
	if stored != 2 {
		t.Fatalf("StoreSchemas stored %d schema rows, want 2", stored)
	}
	testkit.Must(t, w.Write(ctx, rb.pool, msg("after")), "write after StoreSchemas")
	if recs := testkit.ReadAll(t, rb.brokers, "orders", 15, 20*time.Second); len(recs) != 15 {
		t.Fatalf("read %d of 15 messages", len(recs))
	}
}

// Migrations is what Migrate applies: the same files, in the same order.
func TestMigrationsListTheFilesMigrateApplies(t *testing.T) {
	t.Parallel()
	b := setup(t)
	entries, err := fs.ReadDir(outbox.Migrations, ".")
	testkit.Must(t, err, "read Migrations")
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	rows, err := b.pool.Query(testkit.Ctx(t), `SELECT name FROM sagabox.schema_migrations WHERE component = 'outbox' ORDER BY version`)
	testkit.Must(t, err, "applied")
	applied, err := pgx.CollectRows(rows, pgx.RowTo[string])
	testkit.Must(t, err, "applied")
	if len(files) == 0 || !slices.Equal(files, applied) {
		t.Fatalf("Migrations lists %v, Migrate applied %v", files, applied)
	}
	sql, err := fs.ReadFile(outbox.Migrations, files[0])
	testkit.Must(t, err, "read %s", files[0])
	if !strings.Contains(string(sql), "CREATE TABLE sagabox.outbox") {
		t.Fatalf("%s does not create the outbox", files[0])
	}
}

// A relay runs once: a second Run, while the first is running or after it
// returned, is an error (as for the client, orchestrators, participants and
// consumers).
func TestRelayRunRefusesASecondCall(t *testing.T) {
	t.Parallel()
	rb := setupRelay(t, 1)
	relay, stop := rb.startRelay(t, nil)
	ctx := testkit.Ctx(t)
	testkit.Eventually(t, 10*time.Second, "the first Run holds leases", func() bool {
		var n int
		_ = rb.pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.outbox_leases WHERE owner IS NOT NULL`).Scan(&n)
		return n > 0
	})
	if err := relay.Run(ctx); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("second Run: want an error, got %v", err)
	}
	stop()
	done, cancel := context.WithCancel(ctx)
	cancel() // a relay that ran again would stop at once and return nil
	if err := relay.Run(done); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("Run after the first returned: want an error, got %v", err)
	}
}
