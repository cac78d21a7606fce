package sagabox_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

func TestMain(m *testing.M) {
	testkit.VerifyNoLeaks(m)
}

const noteSchema = `{"type": "record", "name": "Note", "namespace": "test.client",
 "fields": [{"name": "text", "type": "string"}]}`

type note struct {
	Text string `avro:"text"`
}

type bundle struct {
	db      *testkit.Database
	brokers []string
	regURL  string
}

func setup(t *testing.T) bundle {
	t.Helper()
	db := testkit.NewDatabase(t)
	return bundle{db: db, brokers: testkit.Kafka(t, 4).ListenAddrs(), regURL: testkit.Registry(t).URL()}
}

func (b bundle) client(t *testing.T, cfg sagabox.Config) *sagabox.Client {
	t.Helper()
	if cfg.Brokers == nil {
		cfg.Brokers, cfg.RegistryURL = b.brokers, b.regURL
	}
	cfg.Schemas = append(cfg.Schemas, noteSchema)
	c, err := sagabox.NewClient(b.db.Pool, cfg)
	testkit.Must(t, err, "NewClient")
	testkit.Must(t, c.Migrate(testkit.Ctx(t)), "Migrate")
	return c
}

func TestNewClientRefusesBadConfig(t *testing.T) {
	t.Parallel()
	pool := testkit.NewDatabase(t).Pool
	for name, cfg := range map[string]sagabox.Config{
		"brokers without a registry":   {Brokers: []string{"127.0.0.1:1"}},
		"a schema that does not parse": {Schemas: []string{`{"type": "record"`}},
		"publishes an unknown schema":  {Schemas: []string{noteSchema}, Publishes: map[string][]string{"t": {"test.client.Nope"}}},
	} {
		if _, err := sagabox.NewClient(pool, cfg); !errors.Is(err, sagabox.ErrInvalidConfig) {
			t.Errorf("%s: got %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := sagabox.NewClient(nil, sagabox.Config{}); !errors.Is(err, sagabox.ErrInvalidConfig) {
		t.Errorf("nil pool: got %v", err)
	}
}

// Invariant: on shutdown the attached parts stop first and the relay drains
// after them, so what a part writes while it stops is still published
// before Run returns.
func TestRunStopsAttachedPartsBeforeTheRelayDrains(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client(t, sagabox.Config{Publishes: map[string][]string{"notes": {"test.client.Note"}}})
	var stopped atomic.Bool
	testkit.Must(t, c.Attach("writer-on-stop", func(ctx context.Context) error {
		<-ctx.Done()
		// The last thing a consumer does: write its reply.
		wctx := context.WithoutCancel(ctx)
		err := pgx.BeginFunc(wctx, c.Pool(), func(tx pgx.Tx) error {
			return c.Writer().Write(wctx, tx, outbox.Message{Topic: "notes", Key: "k", Type: "test.client.Note", Value: &note{Text: "last words"}})
		})
		stopped.Store(true)
		return err
	}), "attach")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("Run returned before ready: %v", err)
	}
	if err := c.Attach("late", func(context.Context) error { return nil }); err == nil {
		t.Error("Attach after Run started succeeded")
	}
	if err := c.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded")
	}
	cancel()
	testkit.Must(t, <-done, "Run")
	if !stopped.Load() {
		t.Fatal("the attached part did not stop")
	}
	var pending int
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM sagabox.outbox`).Scan(&pending), "count")
	if pending != 0 {
		t.Fatalf("%d message(s) left in the outbox after Run returned: the relay stopped before the part", pending)
	}
	recs := testkit.ReadAll(t, b.brokers, "notes", 1, 30*time.Second)
	if len(recs) != 1 || recs[0].Key != "k" {
		t.Fatalf("read %d record(s) from notes, want the one written on stop", len(recs))
	}
}

// Without brokers the client writes, runs only what was attached, and the
// messages wait in the outbox.
func TestClientWithoutBrokersRunsItsPartsAndKeepsMessagesPending(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	c, err := sagabox.NewClient(db.Pool, sagabox.Config{Schemas: []string{noteSchema}})
	testkit.Must(t, err, "NewClient")
	ctx := testkit.Ctx(t)
	testkit.Must(t, c.Migrate(ctx), "Migrate")
	if c.Relay() != nil || c.Registry() != nil {
		t.Fatal("a relay or registry without brokers")
	}
	ran := make(chan struct{})
	testkit.Must(t, c.Attach("http", func(ctx context.Context) error { close(ran); <-ctx.Done(); return nil }), "attach")
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	<-ran
	testkit.Must(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		return c.Writer().Write(ctx, tx, outbox.Message{Topic: "notes", Type: "test.client.Note", Value: &note{Text: "waits"}})
	}), "write")
	cancel()
	testkit.Must(t, <-done, "Run")
	var pending int
	testkit.Must(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.outbox`).Scan(&pending), "count")
	if pending != 1 {
		t.Fatalf("pending = %d, want 1", pending)
	}
}

// A part that fails stops the whole client, and Run says which part.
func TestRunReturnsTheFailingPartsError(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.client(t, sagabox.Config{})
	boom := errors.New("boom")
	testkit.Must(t, c.Attach("fails", func(context.Context) error { return boom }), "attach")
	testkit.Must(t, c.Attach("waits", func(ctx context.Context) error { <-ctx.Done(); return nil }), "attach")
	if err := c.Attach("fails", func(context.Context) error { return nil }); !errors.Is(err, sagabox.ErrInvalidConfig) {
		t.Fatalf("a second part with the same name: %v", err)
	}
	if err := c.Run(testkit.Ctx(t)); !errors.Is(err, boom) {
		t.Fatalf("Run: %v, want boom", err)
	}
}

// Two clients in one process may share a registerer (two services in the
// demo, or a test): no panic, no error.
func TestTwoClientsShareARegisterer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reg := prometheus.NewRegistry()
	b.client(t, sagabox.Config{Registerer: reg})
	b.client(t, sagabox.Config{Registerer: reg})
}
