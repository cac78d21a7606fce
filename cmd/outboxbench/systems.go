package main

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagabox/sagabox/outbox"
)

// system is one way of getting committed messages to Kafka.
type system interface {
	name() string
	// write commits one transaction holding the messages seqs for topic,
	// after a business insert when business is set.
	write(ctx context.Context, topic string, seqs []int64, business bool) error
	// start begins delivering to Kafka; stop waits until it has stopped.
	start(ctx context.Context) (stop func(), err error)
	// tables are emptied before each phase and vacuumed after a backlog is
	// written.
	tables() []string
}

// businessSQL is the business change every transaction makes.
const businessSQL = `INSERT INTO bench_orders (order_id, customer_id, amount_cents) VALUES ($1, $2, $3)`

func businessInsert(ctx context.Context, exec func(ctx context.Context, sql string, args ...any) error, seq int64) error {
	e := event(seq)
	return exec(ctx, businessSQL, e.OrderID, e.CustomerID, e.AmountCents)
}

// --- sagabox -----------------------------------------------------------------

type sagaboxSystem struct {
	pool     *pgxpool.Pool
	writer   *outbox.Writer
	brokers  []string
	registry string
	log      *slog.Logger
	relay    atomic.Pointer[outbox.Relay]
}

func newSagabox(ctx context.Context, pool *pgxpool.Pool, brokers []string, registry string, log *slog.Logger) (*sagaboxSystem, error) {
	if err := outbox.Migrate(ctx, pool); err != nil {
		return nil, err
	}
	s := &sagaboxSystem{pool: pool, brokers: brokers, registry: registry, log: log}
	w, err := outbox.NewWriter(outbox.WriterConfig{
		Codec: outbox.MustCodec(eventSchema),
		// The relay in this process is woken after every write: no NOTIFY.
		Notify: func() {
			if r := s.relay.Load(); r != nil {
				r.Notify()
			}
		},
	})
	if err != nil {
		return nil, err
	}
	if err := w.StoreSchemas(ctx, pool); err != nil {
		return nil, err
	}
	s.writer = w
	return s, nil
}

func (s *sagaboxSystem) name() string     { return "sagabox" }
func (s *sagaboxSystem) tables() []string { return []string{"sagabox.outbox"} }

func (s *sagaboxSystem) write(ctx context.Context, topic string, seqs []int64, business bool) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if business {
			if err := businessInsert(ctx, pgxExec(tx), seqs[0]); err != nil {
				return err
			}
		}
		return s.writer.Write(ctx, tx, sagaboxMessages(topic, seqs)...)
	})
}

func sagaboxMessages(topic string, seqs []int64) []outbox.Message {
	msgs := make([]outbox.Message, len(seqs))
	for i, seq := range seqs {
		e := event(seq)
		msgs[i] = outbox.Message{Topic: topic, Key: keyOf(e), Type: eventType, Value: e,
			Headers: map[string]string{seqHeader: strconv.FormatInt(seq, 10)}}
	}
	return msgs
}

func (s *sagaboxSystem) start(ctx context.Context) (func(), error) {
	relay, err := outbox.NewRelay(outbox.RelayConfig{
		Pool:     s.pool,
		Brokers:  s.brokers,
		Registry: srclient.NewSchemaRegistryClient(s.registry),
		Logger:   s.log,
	})
	if err != nil {
		return nil, err
	}
	s.relay.Store(relay)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := relay.Run(ctx); err != nil {
			s.log.Error("outboxbench: relay stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
		s.relay.Store(nil)
	}, nil
}

func pgxExec(tx pgx.Tx) func(ctx context.Context, sql string, args ...any) error {
	return func(ctx context.Context, sql string, args ...any) error {
		_, err := tx.Exec(ctx, sql, args...)
		return err
	}
}

// --- watermill forwarder -----------------------------------------------------

// forwarderTopic is the watermill-sql topic (table watermill_<topic>) the
// forwarder reads, as in watermill's transactional-events-forwarder example.
const forwarderTopic = "outboxbench_forwarder"

type forwarderSystem struct {
	db       *sql.DB
	brokers  []string
	schema   avro.Schema
	schemaID int
	log      watermill.LoggerAdapter
}

func newForwarder(ctx context.Context, db *sql.DB, brokers []string, schemaID int, log watermill.LoggerAdapter) (*forwarderSystem, error) {
	f := &forwarderSystem{db: db, brokers: brokers, schema: avro.MustParse(eventSchema), schemaID: schemaID, log: log}
	sub, err := f.subscriber()
	if err != nil {
		return nil, err
	}
	defer sub.Close()
	// Creates the messages and offsets tables before any transaction
	// publishes (watermill-sql refuses to create them inside one).
	if err := sub.SubscribeInitialize(forwarderTopic); err != nil {
		return nil, fmt.Errorf("forwarder: initialize: %w", err)
	}
	return f, nil
}

func (f *forwarderSystem) name() string { return "watermill-forwarder" }
func (f *forwarderSystem) tables() []string {
	// Only the messages table: the offsets table remembers what was
	// forwarded, and new rows get higher offsets.
	return []string{`"watermill_` + forwarderTopic + `"`}
}

// subscriber is watermill-sql's subscriber as watermill's docs wire it for
// Postgres: default schema and offsets adapters, default intervals.
func (f *forwarderSystem) subscriber() (*wsql.Subscriber, error) {
	return wsql.NewSubscriber(f.db, wsql.SubscriberConfig{
		SchemaAdapter:    wsql.DefaultPostgreSQLSchema{},
		OffsetsAdapter:   wsql.DefaultPostgreSQLOffsetsAdapter{},
		InitializeSchema: true,
	}, f.log)
}

func (f *forwarderSystem) write(ctx context.Context, topic string, seqs []int64, business bool) error {
	tx, err := f.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if business {
		if err := businessInsert(ctx, sqlExec(tx), seqs[0]); err != nil {
			return err
		}
	}
	sqlPub, err := wsql.NewPublisher(tx, wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, f.log)
	if err != nil {
		return err
	}
	pub := forwarder.NewPublisher(sqlPub, forwarder.PublisherConfig{ForwarderTopic: forwarderTopic})
	msgs := make([]*message.Message, len(seqs))
	for i, seq := range seqs {
		v, err := framed(f.schema, f.schemaID, event(seq))
		if err != nil {
			return err
		}
		msgs[i] = message.NewMessage(watermill.NewUUID(), v)
		msgs[i].Metadata.Set(seqHeader, strconv.FormatInt(seq, 10))
	}
	if err := pub.Publish(topic, msgs...); err != nil {
		return err
	}
	return tx.Commit()
}

func (f *forwarderSystem) start(ctx context.Context) (func(), error) {
	sub, err := f.subscriber()
	if err != nil {
		return nil, err
	}
	// watermill-kafka's publisher in its default configuration (a Sarama
	// SyncProducer, DefaultSaramaSyncPublisherConfig).
	kpub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: f.brokers, Marshaler: kafka.DefaultMarshaler{}}, f.log)
	if err != nil {
		_ = sub.Close()
		return nil, err
	}
	fwd, err := forwarder.NewForwarder(sub, kpub, f.log, forwarder.Config{ForwarderTopic: forwarderTopic})
	if err != nil {
		_ = sub.Close()
		_ = kpub.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fwd.Run(ctx); err != nil {
			f.log.Error("outboxbench: forwarder stopped", err, nil)
		}
	}()
	select {
	case <-fwd.Running():
	case <-done:
		return nil, errors.New("forwarder did not start")
	}
	return func() {
		_ = fwd.Close()
		<-done
		_ = kpub.Close()
		_ = sub.Close()
	}, nil
}

func sqlExec(tx *sql.Tx) func(ctx context.Context, sql string, args ...any) error {
	return func(ctx context.Context, sql string, args ...any) error {
		_, err := tx.ExecContext(ctx, sql, args...)
		return err
	}
}

// framed encodes e in the Confluent wire format, as the relay publishes it,
// so every system puts the same bytes on Kafka.
func framed(s avro.Schema, id int, e orderPlaced) ([]byte, error) {
	b, err := avro.Marshal(s, e)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 5+len(b))
	binary.BigEndian.PutUint32(out[1:5], uint32(id))
	copy(out[5:], b)
	return out, nil
}

// --- ceiling -----------------------------------------------------------------

// ceilingSystem is the least an outbox relay can do: select 1,000 rows, send
// them in one produce request, delete them, commit. No leases, no retries,
// no per-key order across failures, no registry: the upper bound.
type ceilingSystem struct {
	pool     *pgxpool.Pool
	brokers  []string
	schema   avro.Schema
	schemaID int
	idle     time.Duration
}

func newCeiling(ctx context.Context, pool *pgxpool.Pool, brokers []string, schemaID int) (*ceilingSystem, error) {
	_, err := pool.Exec(ctx, `
CREATE TABLE ceiling_outbox (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	message_id uuid   NOT NULL,
	seq        bigint NOT NULL,
	topic      text   NOT NULL,
	key        text   NOT NULL,
	value      bytea  NOT NULL
)`)
	if err != nil {
		return nil, fmt.Errorf("ceiling: create table: %w", err)
	}
	return &ceilingSystem{pool: pool, brokers: brokers, schema: avro.MustParse(eventSchema), schemaID: schemaID, idle: time.Millisecond}, nil
}

func (c *ceilingSystem) name() string     { return "ceiling" }
func (c *ceilingSystem) tables() []string { return []string{"ceiling_outbox"} }

func (c *ceilingSystem) write(ctx context.Context, topic string, seqs []int64, business bool) error {
	n := len(seqs)
	ids, topics, keys, values := make([]uuid.UUID, n), make([]string, n), make([]string, n), make([][]byte, n)
	for i, seq := range seqs {
		e := event(seq)
		v, err := framed(c.schema, c.schemaID, e)
		if err != nil {
			return err
		}
		ids[i], topics[i], keys[i], values[i] = uuid.Must(uuid.NewV7()), topic, keyOf(e), v
	}
	return pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if business {
			if err := businessInsert(ctx, pgxExec(tx), seqs[0]); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `
INSERT INTO ceiling_outbox (message_id, seq, topic, key, value)
SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::bytea[])`, ids, seqs, topics, keys, values)
		return err
	})
}

func (c *ceilingSystem) start(ctx context.Context) (func(), error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(c.brokers...),
		kgo.ManualFlushing(), // one produce request per batch
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.MaxBufferedRecords(10000),
	)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			n, err := c.cycle(ctx, cl)
			if err != nil && ctx.Err() == nil {
				fmt.Printf("# ceiling: %v\n", err)
				time.Sleep(100 * time.Millisecond)
			}
			if n == 0 {
				select {
				case <-ctx.Done():
				case <-time.After(c.idle):
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
		cl.Close()
	}, nil
}

func (c *ceilingSystem) cycle(ctx context.Context, cl *kgo.Client) (int, error) {
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	rows, err := tx.Query(ctx, `SELECT id, message_id::text, seq, topic, key, value FROM ceiling_outbox ORDER BY id LIMIT 1000`)
	if err != nil {
		return 0, err
	}
	var ids []int64
	var recs []*kgo.Record
	for rows.Next() {
		var id, seq int64
		var mid, topic, key string
		var value []byte
		if err := rows.Scan(&id, &mid, &seq, &topic, &key, &value); err != nil {
			return 0, err
		}
		ids = append(ids, id)
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(key), Value: value, Headers: []kgo.RecordHeader{
			{Key: outbox.HeaderID, Value: []byte(mid)},
			{Key: seqHeader, Value: []byte(strconv.FormatInt(seq, 10))},
		}})
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		return 0, nil
	}
	var (
		mu   sync.Mutex
		perr error
	)
	for _, r := range recs {
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				perr = err
				mu.Unlock()
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return 0, err
	}
	if perr != nil {
		return 0, perr
	}
	if _, err := tx.Exec(ctx, `DELETE FROM ceiling_outbox WHERE id = ANY($1)`, ids); err != nil {
		return 0, err
	}
	return len(ids), tx.Commit(ctx)
}
