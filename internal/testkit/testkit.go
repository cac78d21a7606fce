// Package testkit gives each test what it needs to run against real
// infrastructure in parallel: its own Postgres database on the real server,
// and, when asked, an in-process Kafka cluster (kfake) and Schema Registry
// (srfake). Everything is torn down with t.Cleanup.
package testkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr/srfake"
)

// AdminURL is the server the test databases are created on. Set
// SAGABOX_TEST_DATABASE_URL to point the tests at another server.
func AdminURL() string {
	if u := os.Getenv("SAGABOX_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// Database is a fresh, empty database that exists for one test.
type Database struct {
	Name string
	URL  string
	Pool *pgxpool.Pool
}

// NewDatabase creates a database for t, named after the test, and drops it
// (terminating any connection left open) when the test ends.
func NewDatabase(t testing.TB) *Database {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, drop, err := CreateDatabase(ctx, t.Name())
	if err != nil {
		t.Fatalf("testkit: %v (is Postgres running? .ci/run starts it)", err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Errorf("testkit: %v", err)
		}
	})
	return db
}

// CreateDatabase creates a fresh database on the AdminURL server, named
// after label, and returns it with a function that closes its pool and drops
// it. For examples and commands; tests use NewDatabase.
func CreateDatabase(ctx context.Context, label string) (*Database, func() error, error) {
	name := dbName(label)
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", AdminURL(), err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, nil, fmt.Errorf("create database %s: %w", name, err)
	}
	u, err := url.Parse(AdminURL())
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", AdminURL(), err)
	}
	u.Path = "/" + name
	db := &Database{Name: name, URL: u.String()}
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		return nil, nil, err
	}
	cfg.MaxConns = 16
	db.Pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("pool for %s: %w", name, err)
	}
	drop := func() error {
		db.Pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			return fmt.Errorf("drop %s: %w", name, err)
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop %s: %w", name, err)
		}
		return nil
	}
	return db, drop, nil
}

// DB is NewDatabase(t).Pool, for tests that only need the pool.
func DB(t testing.TB) *pgxpool.Pool { return NewDatabase(t).Pool }

func dbName(testName string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 40 {
		s = s[:40]
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	return "sbt_" + s + "_" + hex.EncodeToString(rnd[:])
}

// Kafka starts an in-process Kafka cluster (kfake) listening on a random
// loopback port. Topics are created on first use with the given partitions.
func Kafka(t testing.TB, partitions int, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	base := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(partitions),
	}
	c, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		t.Fatalf("testkit: start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Registry starts an in-process Schema Registry (srfake) on a random port.
func Registry(t testing.TB) *srfake.Registry {
	t.Helper()
	r := srfake.New()
	t.Cleanup(r.Close)
	return r
}

// Record is one record read back from Kafka.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       string
	Value     []byte
	Headers   map[string]string
	Timestamp time.Time
}

// ReadAll consumes topic from the start until it has read want records or
// timeout passes, and returns what it read. It uses franz-go, a client that
// is not the one under test, so tests see what any consumer would see.
func ReadAll(t testing.TB, brokers []string, topic string, want int, timeout time.Duration) []Record {
	t.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		t.Fatalf("testkit: consumer: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []Record
	for len(out) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			break
		}
		fs.EachError(func(topic string, p int32, err error) {
			t.Logf("testkit: fetch %s/%d: %v", topic, p, err)
		})
		fs.EachRecord(func(r *kgo.Record) {
			h := map[string]string{}
			for _, kv := range r.Headers {
				h[kv.Key] = string(kv.Value)
			}
			out = append(out, Record{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset,
				Key: string(r.Key), Value: r.Value, Headers: h, Timestamp: r.Timestamp})
		})
	}
	return out
}

// Eventually polls cond every 20ms until it returns true or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

// Ctx returns a context cancelled when the test ends.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

// Must fails the test on err.
func Must(t testing.TB, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}
