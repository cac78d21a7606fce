package outbox_test

import (
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/fnv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/hamba/avro/v2"
	_ "github.com/jackc/pgx/v5/stdlib" // the database/sql driver the adapter needs
	"github.com/riferrei/srclient"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

// OrderPlaced is named after its Avro schema, so the AvroMarshaler finds the
// schema without being told.
type OrderPlaced orderPlaced

type wmBundle struct {
	*bundle
	sqlDB *sql.DB
	ctx   context.Context
}

func setupWatermill(t *testing.T) *wmBundle {
	t.Helper()
	b := setup(t)
	ctx := testkit.Ctx(t)
	db, err := sql.Open("pgx", b.db.URL)
	testkit.Must(t, err, "open database/sql")
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.ExecContext(ctx, `CREATE TABLE orders (id text PRIMARY KEY)`)
	testkit.Must(t, err, "create orders")
	return &wmBundle{bundle: b, sqlDB: db, ctx: ctx}
}

// eventBus returns a cqrs EventBus that publishes into the outbox inside tx,
// on the topic "orders", keyed by order ID. published sees every message.
func (b *wmBundle) eventBus(t *testing.T, tx *sql.Tx, published func(*message.Message)) *cqrs.EventBus {
	t.Helper()
	pub, err := outbox.NewWatermillPublisher(tx, b.writer)
	testkit.Must(t, err, "publisher")
	bus, err := cqrs.NewEventBusWithConfig(pub, cqrs.EventBusConfig{
		GeneratePublishTopic: func(cqrs.GenerateEventPublishTopicParams) (string, error) { return "orders", nil },
		Marshaler: outbox.AvroMarshaler{Codec: b.codec, Key: func(v any) string {
			if o, ok := v.(OrderPlaced); ok {
				return o.OrderID
			}
			return ""
		}},
		OnPublish: func(p cqrs.OnEventSendParams) error {
			p.Message.Metadata.Set(outbox.HeaderCorrelationID, "corr-1")
			p.Message.Metadata.Set("tenant", "acme")
			if published != nil {
				published(p.Message)
			}
			return nil
		},
	})
	testkit.Must(t, err, "event bus")
	return bus
}

type outboxRow struct {
	id                                   int64
	messageID, topic, key, typ, corr, tp string
	shard                                int16
	value, fp                            []byte
	headers                              map[string]string
}

func readRows(t *testing.T, b *wmBundle) []outboxRow {
	t.Helper()
	rows, err := b.pool.Query(b.ctx, `
SELECT id, message_id::text, topic, key, message_type, correlation_id, traceparent, shard, value, schema_fp, headers
FROM sagabox.outbox ORDER BY id`)
	testkit.Must(t, err, "select")
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		var h []byte
		testkit.Must(t, rows.Scan(&r.id, &r.messageID, &r.topic, &r.key, &r.typ, &r.corr, &r.tp, &r.shard, &r.value, &r.fp, &h), "scan")
		testkit.Must(t, json.Unmarshal(h, &r.headers), "headers")
		out = append(out, r)
	}
	testkit.Must(t, rows.Err(), "rows")
	return out
}

func shardOfKey(key string) int16 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int16(h.Sum32() % outbox.NumShards)
}

// A cqrs EventBus publishing inside a committed *sql.Tx leaves one outbox row
// per event, with the columns Writer.Write would have written.
func TestWatermillEventBusCommitWritesOutboxRows(t *testing.T) {
	t.Parallel()
	b := setupWatermill(t)
	var notified atomic.Int32
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: b.codec, Notify: func() { notified.Add(1) }})
	testkit.Must(t, err, "writer")
	b.writer = w

	tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	traceID, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	spanID, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	ctx := trace.ContextWithSpanContext(b.ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled}))

	tx, err := b.sqlDB.BeginTx(ctx, nil)
	testkit.Must(t, err, "begin")
	_, err = tx.ExecContext(ctx, `INSERT INTO orders (id) VALUES ('o1')`)
	testkit.Must(t, err, "business insert")
	var ids []string
	bus := b.eventBus(t, tx, func(m *message.Message) { ids = append(ids, m.UUID) })
	events := []OrderPlaced{{OrderID: "o1", Seq: 1}, {OrderID: "o1", Seq: 2, Note: "second"}}
	for _, e := range events {
		testkit.Must(t, bus.Publish(ctx, e), "publish %d", e.Seq)
	}
	if n := countRows(t, b.bundle); n != 0 {
		t.Fatalf("%d rows visible before commit", n)
	}
	testkit.Must(t, tx.Commit(), "commit")

	rows := readRows(t, b)
	if len(rows) != len(events) {
		t.Fatalf("want %d rows, got %d", len(events), len(rows))
	}
	schema, _ := b.codec.Schema(orderPlacedType)
	for i, r := range rows {
		want, err := avro.Marshal(schema.Avro, orderPlaced(events[i]))
		testkit.Must(t, err, "marshal")
		switch {
		case r.messageID != ids[i]:
			t.Errorf("row %d: message_id %s, want the watermill UUID %s", i, r.messageID, ids[i])
		case r.topic != "orders" || r.key != "o1" || r.typ != orderPlacedType:
			t.Errorf("row %d: topic/key/type = %q/%q/%q", i, r.topic, r.key, r.typ)
		case string(r.value) != string(want):
			t.Errorf("row %d: value %x, want %x", i, r.value, want)
		case string(r.fp) != string(schema.Fingerprint[:]):
			t.Errorf("row %d: schema fingerprint differs", i)
		case r.shard != shardOfKey("o1"):
			t.Errorf("row %d: shard %d, want %d", i, r.shard, shardOfKey("o1"))
		case r.corr != "corr-1":
			t.Errorf("row %d: correlation_id %q", i, r.corr)
		case r.tp != tp:
			t.Errorf("row %d: traceparent %q, want %q", i, r.tp, tp)
		case len(r.headers) != 1 || r.headers["tenant"] != "acme":
			t.Errorf("row %d: headers %v, want only tenant=acme (known metadata goes to columns)", i, r.headers)
		}
	}
	if rows[0].id >= rows[1].id {
		t.Errorf("events of one key out of order: ids %d, %d", rows[0].id, rows[1].id)
	}
	if n := notified.Load(); n != 2 {
		t.Errorf("Writer's Notify hook called %d times, want 2", n)
	}
}

// Rolling back the business transaction takes its events with it.
func TestWatermillEventBusRollbackWritesNothing(t *testing.T) {
	t.Parallel()
	b := setupWatermill(t)
	tx, err := b.sqlDB.BeginTx(b.ctx, nil)
	testkit.Must(t, err, "begin")
	_, err = tx.ExecContext(b.ctx, `INSERT INTO orders (id) VALUES ('o1')`)
	testkit.Must(t, err, "business insert")
	testkit.Must(t, b.eventBus(t, tx, nil).Publish(b.ctx, OrderPlaced{OrderID: "o1", Seq: 1}), "publish")
	testkit.Must(t, tx.Rollback(), "rollback")
	if n := countRows(t, b.bundle); n != 0 {
		t.Fatalf("rolled back transaction left %d outbox rows", n)
	}
}

type orderPlacedWrongSeq struct {
	OrderID string `avro:"order_id"`
	Seq     string `avro:"seq"`
}

type orderPlacedNoSeq struct {
	OrderID string `avro:"order_id"`
}

// A value that does not fit its schema is refused with an error naming the
// field, and nothing of the transaction's events is written.
func TestWatermillRefusesValueThatDoesNotFitItsSchema(t *testing.T) {
	t.Parallel()
	b := setupWatermill(t)
	tx, err := b.sqlDB.BeginTx(b.ctx, nil)
	testkit.Must(t, err, "begin")
	pub, err := outbox.NewWatermillPublisher(tx, b.writer)
	testkit.Must(t, err, "publisher")
	asOrderPlaced := func(any) string { return orderPlacedType }
	bus, err := cqrs.NewEventBus(pub, func(string) string { return "orders" }, outbox.AvroMarshaler{Codec: b.codec, TypeName: asOrderPlaced})
	testkit.Must(t, err, "bus")

	for name, c := range map[string]struct {
		v     any
		field string
	}{
		"wrong type":    {orderPlacedWrongSeq{OrderID: "o1", Seq: "two"}, "Seq"},
		"missing field": {orderPlacedNoSeq{OrderID: "o1"}, `"seq"`},
	} {
		err := bus.Publish(b.ctx, c.v)
		if !errors.Is(err, outbox.ErrInvalidMessage) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: want ErrInvalidMessage naming %s, got %v", name, c.field, err)
		}
	}

	// Bytes that are not Avro for the schema are refused by the publisher
	// itself, whatever marshaler made them; so is a batch containing them.
	good, err := outbox.AvroMarshaler{Codec: b.codec}.Marshal(OrderPlaced{OrderID: "o1", Seq: 1})
	testkit.Must(t, err, "marshal")
	garbage := message.NewMessage("0193a3f0-0000-7000-8000-000000000001", []byte{0x02, 'o'})
	garbage.Metadata.Set(outbox.HeaderType, orderPlacedType)
	err = pub.Publish("orders", good, garbage)
	var me *outbox.MessageError
	if !errors.Is(err, outbox.ErrInvalidMessage) || !errors.As(err, &me) || me.Index != 1 {
		t.Errorf("truncated payload: want a *MessageError for message 1, got %v", err)
	}

	testkit.Must(t, tx.Commit(), "commit")
	if n := countRows(t, b.bundle); n != 0 {
		t.Fatalf("refused events wrote %d rows", n)
	}
}

// The outbox needs a stable UUID and an Avro type per message; a watermill
// message without them is refused with an error that says what to set.
func TestWatermillRefusesMessagesWithoutIDOrType(t *testing.T) {
	t.Parallel()
	b := setupWatermill(t)
	pub, err := outbox.NewWatermillPublisher(b.sqlDB, b.writer)
	testkit.Must(t, err, "publisher")
	payload, err := outbox.AvroMarshaler{Codec: b.codec}.Marshal(OrderPlaced{OrderID: "o1", Seq: 1})
	testkit.Must(t, err, "marshal")

	notUUID := message.NewMessage("order-1", payload.Payload)
	notUUID.Metadata.Set(outbox.HeaderType, orderPlacedType)
	noType := message.NewMessage("0193a3f0-0000-7000-8000-000000000002", payload.Payload)
	unknownType := message.NewMessage("0193a3f0-0000-7000-8000-000000000003", payload.Payload)
	unknownType.Metadata.Set(outbox.HeaderType, "nope.Nope")

	for name, c := range map[string]struct {
		msg  *message.Message
		says string
	}{
		"not a UUID":   {notUUID, `UUID "order-1" is not a UUID`},
		"no type":      {noType, outbox.HeaderType},
		"unknown type": {unknownType, "nope.Nope"},
	} {
		err := pub.Publish("orders", c.msg)
		if !errors.Is(err, outbox.ErrInvalidMessage) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: want ErrInvalidMessage saying %q, got %v", name, c.says, err)
		}
	}
	// Publishing the same UUID twice is refused too: consumers deduplicate on it.
	testkit.Must(t, pub.Publish("orders", payload), "first publish")
	if err := pub.Publish("orders", payload); !errors.Is(err, outbox.ErrInvalidMessage) {
		t.Errorf("duplicate UUID: want ErrInvalidMessage, got %v", err)
	}
	if n := countRows(t, b.bundle); n != 1 {
		t.Fatalf("want only the one good row, got %d", n)
	}
}

// Rows from pgx code (Writer.Write) and from watermill code land in the same
// table, indistinguishable apart from their IDs, and one key keeps commit
// order across both.
func TestWatermillAndWriterShareTheOutbox(t *testing.T) {
	t.Parallel()
	b := setupWatermill(t)

	ptx, err := b.pool.Begin(b.ctx)
	testkit.Must(t, err, "pgx begin")
	testkit.Must(t, b.writer.Write(b.ctx, ptx, outbox.Message{Topic: "orders", Key: "o1", Type: orderPlacedType,
		Value: orderPlaced{OrderID: "o1", Seq: 1}, CorrelationID: "corr-1", Headers: map[string]string{"tenant": "acme"}}), "write")
	testkit.Must(t, ptx.Commit(b.ctx), "pgx commit")

	stx, err := b.sqlDB.BeginTx(b.ctx, nil)
	testkit.Must(t, err, "sql begin")
	testkit.Must(t, b.eventBus(t, stx, nil).Publish(b.ctx, OrderPlaced{OrderID: "o1", Seq: 1}), "publish")
	testkit.Must(t, stx.Commit(), "sql commit")

	rows := readRows(t, b)
	if len(rows) != 2 {
		t.Fatalf("want 2 rows, got %d", len(rows))
	}
	p, w := rows[0], rows[1]
	if p.messageID == w.messageID || p.id >= w.id {
		t.Fatalf("rows not distinct and ordered: %+v %+v", p, w)
	}
	p.id, w.id, p.messageID, w.messageID = 0, 0, "", ""
	pj, _ := json.Marshal([]any{p.topic, p.key, p.typ, p.corr, p.shard, p.value, p.fp, p.headers})
	wj, _ := json.Marshal([]any{w.topic, w.key, w.typ, w.corr, w.shard, w.value, w.fp, w.headers})
	if string(pj) != string(wj) {
		t.Fatalf("the same event written two ways differs:\npgx:       %s\nwatermill: %s", pj, wj)
	}
}

// Two transactions publishing the same key through watermill get their ids
// in commit order: the second waits on the key's advisory lock.
func TestWatermillTakesThePerKeyLockBeforeTheID(t *testing.T) {
	t.Parallel()
	b := setupWatermill(t)
	first, err := b.sqlDB.BeginTx(b.ctx, nil)
	testkit.Must(t, err, "begin first")
	second, err := b.sqlDB.BeginTx(b.ctx, nil)
	testkit.Must(t, err, "begin second")
	// The first transaction writes (and locks the key) but commits last.
	testkit.Must(t, b.eventBus(t, first, nil).Publish(b.ctx, OrderPlaced{OrderID: "o1", Seq: 1}), "first publish")
	secondBus := b.eventBus(t, second, nil)
	done := make(chan error, 1)
	go func() {
		if err := secondBus.Publish(b.ctx, OrderPlaced{OrderID: "o1", Seq: 2}); err != nil {
			done <- err
			return
		}
		done <- second.Commit()
	}()
	// Give the second a chance to overtake; it must not be able to.
	testkit.Eventually(t, 10*time.Second, "second transaction to wait on the key lock", func() bool {
		var waiting bool
		_ = b.pool.QueryRow(b.ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))`).Scan(&waiting)
		return waiting
	})
	testkit.Must(t, first.Commit(), "first commit")
	testkit.Must(t, <-done, "second")

	var seqs []int64
	schema, _ := b.codec.Schema(orderPlacedType)
	for _, r := range readRows(t, b) {
		var o orderPlaced
		testkit.Must(t, avro.Unmarshal(schema.Avro, r.value, &o), "decode")
		seqs = append(seqs, o.Seq)
	}
	if len(seqs) != 2 || seqs[0] != 1 || seqs[1] != 2 {
		t.Fatalf("ids of key o1 not in commit order: seqs by id %v", seqs)
	}
}

// The outbox is read by the relay; a watermill-sql Subscriber pointed at it
// gets an error that says so instead of silently competing with the relay.
func TestWatermillSchemaAdapterRefusesToBeSubscribed(t *testing.T) {
	t.Parallel()
	b := setupWatermill(t)
	a, err := outbox.NewWatermillSchemaAdapter(b.writer)
	testkit.Must(t, err, "adapter")
	q := a.SelectQuery("orders", "", nil)
	_, err = b.sqlDB.ExecContext(b.ctx, q.Query, q.Args...)
	if err == nil || !strings.Contains(err.Error(), "sagabox relay") {
		t.Errorf("select: want an error naming the relay, got %v", err)
	}
	if _, err := a.UnmarshalMessage(nil); err == nil || !strings.Contains(err.Error(), "sagabox relay") {
		t.Errorf("unmarshal: want an error naming the relay, got %v", err)
	}
	if qs := a.SchemaInitializingQueries("orders"); len(qs) != 0 {
		t.Errorf("schema initialization should be left to outbox.Migrate, got %v", qs)
	}
}

// The marshaler reads what the relay publishes: Confluent-framed Avro whose
// schema ID the registry knows, and names it by the message_type header.
func TestWatermillAvroMarshalerUnmarshalsFramedValues(t *testing.T) {
	t.Parallel()
	reg := testkit.Registry(t)
	client := srclient.NewSchemaRegistryClient(reg.URL())
	created, err := client.CreateSchema("orders-"+orderPlacedType, orderPlacedSchema, srclient.Avro)
	testkit.Must(t, err, "register")
	codec := outbox.MustCodec(orderPlacedSchema)
	m := outbox.AvroMarshaler{Codec: codec, Decoder: outbox.NewDecoder(client, codec)}

	want := OrderPlaced{OrderID: "o9", Seq: 9, Note: "n"}
	msg, err := m.Marshal(want)
	testkit.Must(t, err, "marshal")
	if got := m.NameFromMessage(msg); got != orderPlacedType || m.Name(want) != orderPlacedType {
		t.Fatalf("names: from message %q, from value %q, want %q", got, m.Name(want), orderPlacedType)
	}
	framed := make([]byte, 5, 5+len(msg.Payload))
	binary.BigEndian.PutUint32(framed[1:], uint32(created.ID()))
	msg.Payload = append(framed, msg.Payload...)

	var got OrderPlaced
	testkit.Must(t, m.Unmarshal(msg, &got), "unmarshal")
	if got != want {
		t.Fatalf("round trip: got %+v, want %+v", got, want)
	}
	msg.Payload = []byte("{}")
	if err := m.Unmarshal(msg, &got); !errors.Is(err, outbox.ErrNotAvro) {
		t.Fatalf("unframed payload: want ErrNotAvro, got %v", err)
	}
}

// The publisher does what Writer.Write does after the insert: with
// NotifyChannel set, relays in other processes hear of the commit.
func TestWatermillPublisherNotifiesTheChannel(t *testing.T) {
	t.Parallel()
	b := setupWatermill(t)
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: b.codec, NotifyChannel: "sagabox_outbox"})
	testkit.Must(t, err, "writer")
	b.writer = w

	listener, err := b.pool.Acquire(b.ctx)
	testkit.Must(t, err, "acquire")
	defer listener.Release()
	_, err = listener.Exec(b.ctx, `LISTEN sagabox_outbox`)
	testkit.Must(t, err, "listen")

	tx, err := b.sqlDB.BeginTx(b.ctx, nil)
	testkit.Must(t, err, "begin")
	testkit.Must(t, b.eventBus(t, tx, nil).Publish(b.ctx, OrderPlaced{OrderID: "o1", Seq: 1}), "publish")
	testkit.Must(t, tx.Commit(), "commit")

	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	n, err := listener.Conn().WaitForNotification(ctx)
	testkit.Must(t, err, "no notification after commit")
	if n.Channel != "sagabox_outbox" {
		t.Fatalf("notification on %q", n.Channel)
	}
	_, _ = listener.Exec(context.Background(), `UNLISTEN *`)
}

// Messages of different traces in one Publish call each keep their own
// trace context (they used to be refused).
func TestWatermillPublishKeepsEachMessagesTrace(t *testing.T) {
	t.Parallel()
	b := setupWatermill(t)
	tx, err := b.sqlDB.BeginTx(b.ctx, nil)
	testkit.Must(t, err, "begin")
	pub, err := outbox.NewWatermillPublisher(tx, b.writer)
	testkit.Must(t, err, "publisher")
	tps := []string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""}
	var msgs []*message.Message
	for i, tp := range tps {
		value, err := avro.Marshal(b.codec.MustSchema(orderPlacedType), orderPlaced{OrderID: "o1", Seq: int64(i)})
		testkit.Must(t, err, "marshal")
		m := message.NewMessage(watermill.NewUUID(), value)
		m.Metadata.Set(outbox.HeaderType, orderPlacedType)
		m.Metadata.Set(outbox.MetadataKey, "o1")
		if tp != "" {
			m.Metadata.Set(outbox.HeaderTraceparent, tp)
		}
		msgs = append(msgs, m)
	}
	testkit.Must(t, pub.Publish("orders", msgs...), "publish")
	testkit.Must(t, tx.Commit(), "commit")
	rows := readRows(t, b)
	if len(rows) != len(tps) {
		t.Fatalf("%d rows, want %d", len(rows), len(tps))
	}
	for i, r := range rows {
		if r.tp != tps[i] {
			t.Errorf("row %d: traceparent %q, want %q", i, r.tp, tps[i])
		}
	}
}
