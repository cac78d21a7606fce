// Package outboxtest lets a test assert what a transaction wrote to the
// outbox: topic, key, message type, correlation, causation and saga IDs,
// extra headers and the decoded value, without Kafka and without decoding
// Avro by hand.
//
// It reads the sagabox.outbox table through whatever the test holds: a pool
// or connection for what committed, or the transaction itself to look at its
// writes before it commits or rolls back. The table holds what no relay has
// published yet, so run the test without a relay (or before it runs).
//
//	tx, _ := pool.Begin(ctx)
//	defer tx.Rollback(ctx)
//	_ = svc.PlaceOrder(ctx, tx, order)
//
//	m := outboxtest.ExpectOne(t, tx, codec, outboxtest.Topic("order.events"), outboxtest.Type("shop.OrderPlaced"))
//	var ev shop.OrderPlaced
//	if err := m.Decode(&ev); err != nil {
//		t.Fatal(err)
//	}
//
// ExpectOne, ExpectNone, Last and Messages fail the test (listing what the
// outbox holds, so the failure says what was written instead); Read returns
// an error, for code that has no testing.TB.
package outboxtest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/outbox"
)

// Querier is what the kit reads the outbox through: pgx.Tx, *pgx.Conn and
// *pgxpool.Pool all satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Message is one row of the outbox: a message written and not yet published.
type Message struct {
	// ID is the message's ID, sent as the outbox.HeaderID header.
	ID    uuid.UUID
	Topic string
	Key   string
	// Type is the Avro full name of the value's schema.
	Type          string
	CorrelationID string
	CausationID   string
	SagaID        string
	// Headers are the extra headers given in outbox.Message.Headers (never
	// nil; the reserved headers are the fields above).
	Headers map[string]string
	// Raw is the value as stored: Avro binary, without the Confluent header.
	Raw []byte
	// Parked is true when the relay gave up publishing it.
	Parked bool

	codec  *outbox.Codec
	writer avro.Schema // the schema the row was written with, nil if unknown
	err    error       // why writer is nil
}

// Decode decodes the value into v (a pointer to a struct with avro tags, or
// to a map[string]any) with the schema the message was written with.
func (m Message) Decode(v any) error {
	if m.writer == nil {
		return fmt.Errorf("outboxtest: decode %s: %w", m.Type, m.err)
	}
	if err := avro.Unmarshal(m.writer, m.Raw, v); err != nil {
		return fmt.Errorf("outboxtest: decode %s: %w", m.Type, err)
	}
	return nil
}

// DecodePayload decodes a saga command's or reply's payload. A saga message
// (with the sagabox_step header) is its payload record itself, decoded as
// Decode does; sagabox.saga.Empty is no payload. An envelope older versions
// wrote (sagabox.saga.Command, sagabox.saga.Reply), a record with a
// "payload_type" field naming the payload's schema and a "payload" field
// holding it as Avro binary, is unwrapped. The codec must know the payload's
// schema.
func (m Message) DecodePayload(v any) error {
	if _, ok := m.Headers["sagabox_step"]; ok {
		if m.Type == "sagabox.saga.Empty" {
			return fmt.Errorf("outboxtest: the saga message on %s carries no payload", m.Topic)
		}
		return m.Decode(v)
	}
	var env map[string]any
	if err := m.Decode(&env); err != nil {
		return err
	}
	typ, ok1 := env["payload_type"].(string)
	raw, ok2 := env["payload"].([]byte)
	switch {
	case !ok1 || !ok2:
		return fmt.Errorf("outboxtest: %s is not an envelope: it has no payload_type and payload fields", m.Type)
	case typ == "":
		return fmt.Errorf("outboxtest: the %s carries no payload", m.Type)
	}
	s, ok := m.codec.Schema(typ)
	if !ok {
		return fmt.Errorf("outboxtest: payload type %q of a %s: add its schema to the codec", typ, m.Type)
	}
	if err := avro.Unmarshal(s.Avro, raw, v); err != nil {
		return fmt.Errorf("outboxtest: decode %s payload %s: %w", m.Type, typ, err)
	}
	return nil
}

// String describes the message on one line, for failure messages.
func (m Message) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s key=%q type=%s", m.Topic, m.Key, m.Type)
	for _, f := range [][2]string{{"correlation", m.CorrelationID}, {"causation", m.CausationID}, {"saga", m.SagaID}} {
		if f[1] != "" {
			fmt.Fprintf(&b, " %s=%s", f[0], f[1])
		}
	}
	if len(m.Headers) > 0 {
		h, _ := json.Marshal(m.Headers) // sorted keys
		fmt.Fprintf(&b, " headers=%s", h)
	}
	if m.Parked {
		b.WriteString(" parked")
	}
	return b.String()
}

// Filter selects messages. Several filters all have to match.
type Filter struct {
	desc  string
	match func(*Message) bool
}

// String is how the filter shows in failure messages, such as topic="orders".
func (f Filter) String() string { return f.desc }

func field(name, want string, get func(*Message) string) Filter {
	return Filter{desc: fmt.Sprintf("%s=%q", name, want), match: func(m *Message) bool { return get(m) == want }}
}

// Topic selects the messages of one topic.
func Topic(topic string) Filter {
	return field("topic", topic, func(m *Message) string { return m.Topic })
}

// Key selects the messages with this key.
func Key(key string) Filter { return field("key", key, func(m *Message) string { return m.Key }) }

// Type selects the messages whose value has this schema (Avro full name).
func Type(fullName string) Filter {
	return field("type", fullName, func(m *Message) string { return m.Type })
}

// CorrelationID selects the messages of one business flow.
func CorrelationID(id string) Filter {
	return field("correlation", id, func(m *Message) string { return m.CorrelationID })
}

// CausationID selects the messages caused by the message with this ID.
func CausationID(id string) Filter {
	return field("causation", id, func(m *Message) string { return m.CausationID })
}

// SagaID selects the messages of one saga.
func SagaID(id string) Filter {
	return field("saga", id, func(m *Message) string { return m.SagaID })
}

// Header selects the messages with this extra header.
func Header(name, value string) Filter {
	return Filter{desc: fmt.Sprintf("header %s=%q", name, value), match: func(m *Message) bool {
		v, ok := m.Headers[name]
		return ok && v == value
	}}
}

const readSQL = `
SELECT o.message_id, o.topic, o.key, o.message_type, o.correlation_id, o.causation_id, o.saga_id,
	o.headers, o.value, o.schema_fp, o.parked_at IS NOT NULL, coalesce(s.definition, '')
FROM sagabox.outbox o LEFT JOIN sagabox.outbox_schemas s ON s.fingerprint = o.schema_fp
ORDER BY o.id`

// Read returns the messages in the outbox that match every filter, in the
// order they were written. codec decodes the values: pass the one the
// writer uses (a value written with a schema the codec does not have, or
// has in another version, is decoded with the definition stored in
// sagabox.outbox_schemas).
func Read(ctx context.Context, db Querier, codec *outbox.Codec, filters ...Filter) ([]Message, error) {
	all, err := readAll(ctx, db, codec)
	if err != nil {
		return nil, err
	}
	return match(all, filters), nil
}

func readAll(ctx context.Context, db Querier, codec *outbox.Codec) ([]Message, error) {
	if codec == nil {
		return nil, fmt.Errorf("outboxtest: the codec is nil: pass the one the writer uses")
	}
	rows, err := db.Query(ctx, readSQL)
	if err != nil {
		return nil, fmt.Errorf("outboxtest: read the outbox: %w (did you run outbox.Migrate?)", err)
	}
	defer rows.Close()
	var out []Message
	parsed := map[string]avro.Schema{}
	for rows.Next() {
		m := Message{codec: codec}
		var headers, fp []byte
		var def string
		if err := rows.Scan(&m.ID, &m.Topic, &m.Key, &m.Type, &m.CorrelationID, &m.CausationID, &m.SagaID,
			&headers, &m.Raw, &fp, &m.Parked, &def); err != nil {
			return nil, fmt.Errorf("outboxtest: read the outbox: %w", err)
		}
		if err := json.Unmarshal(headers, &m.Headers); err != nil {
			return nil, fmt.Errorf("outboxtest: headers of message %s: %w", m.ID, err)
		}
		if m.Headers == nil {
			m.Headers = map[string]string{}
		}
		m.writer, m.err = writerSchema(codec, m.Type, fp, def, parsed)
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outboxtest: read the outbox: %w", err)
	}
	return out, nil
}

// writerSchema is the schema a row was written with: the codec's when it is
// the same definition, else the stored definition.
func writerSchema(c *outbox.Codec, typ string, fp []byte, def string, parsed map[string]avro.Schema) (avro.Schema, error) {
	if s, ok := c.Schema(typ); ok && string(s.Fingerprint[:]) == string(fp) {
		return s.Avro, nil
	}
	if def == "" {
		return nil, fmt.Errorf("the codec has no schema %s and sagabox.outbox_schemas has no definition for the row's fingerprint", typ)
	}
	if s, ok := parsed[def]; ok {
		return s, nil
	}
	s, err := avro.ParseWithCache(def, "", &avro.SchemaCache{})
	if err != nil {
		return nil, fmt.Errorf("the codec has no schema %s in the row's version, and its stored definition does not parse alone: %w", typ, err)
	}
	parsed[def] = s
	return s, nil
}

func match(all []Message, filters []Filter) []Message {
	var out []Message
next:
	for i := range all {
		for _, f := range filters {
			if f.match != nil && !f.match(&all[i]) { // the zero Filter matches everything
				continue next
			}
		}
		out = append(out, all[i])
	}
	return out
}

// Messages is Read for a test: it fails t when the outbox cannot be read.
// The query runs with t.Context().
func Messages(t testing.TB, db Querier, codec *outbox.Codec, filters ...Filter) []Message {
	t.Helper()
	ms, err := Read(t.Context(), db, codec, filters...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return ms
}

// ExpectOne returns the one message that matches every filter, and fails t
// (listing what the outbox holds) when there is none or more than one.
func ExpectOne(t testing.TB, db Querier, codec *outbox.Codec, filters ...Filter) Message {
	t.Helper()
	all, got := expect(t, db, codec, filters)
	if len(got) != 1 {
		t.Fatalf("outboxtest: want 1 message with %s, found %d%s", describe(filters), len(got), listing(all))
		return Message{}
	}
	return got[0]
}

// ExpectNone fails t (listing what the outbox holds) when a message matches
// every filter. With no filter, it checks that the outbox is empty.
func ExpectNone(t testing.TB, db Querier, codec *outbox.Codec, filters ...Filter) {
	t.Helper()
	all, got := expect(t, db, codec, filters)
	if len(got) != 0 {
		t.Fatalf("outboxtest: want no message with %s, found %d%s", describe(filters), len(got), listing(all))
	}
}

// Last returns the newest message that matches every filter, and fails t
// (listing what the outbox holds) when there is none.
func Last(t testing.TB, db Querier, codec *outbox.Codec, filters ...Filter) Message {
	t.Helper()
	all, got := expect(t, db, codec, filters)
	if len(got) == 0 {
		t.Fatalf("outboxtest: want a message with %s, found none%s", describe(filters), listing(all))
		return Message{}
	}
	return got[len(got)-1]
}

func expect(t testing.TB, db Querier, codec *outbox.Codec, filters []Filter) (all, got []Message) {
	t.Helper()
	all, err := readAll(t.Context(), db, codec)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return all, match(all, filters)
}

func describe(filters []Filter) string {
	if len(filters) == 0 {
		return "any topic"
	}
	ds := make([]string, len(filters))
	for i, f := range filters {
		ds[i] = f.desc
	}
	return strings.Join(ds, " ")
}

// listing shows the outbox in a failure message (at most 20 rows).
func listing(all []Message) string {
	if len(all) == 0 {
		return "; the outbox is empty"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "; the outbox holds %d:", len(all))
	for i, m := range all {
		if i == 20 {
			fmt.Fprintf(&b, "\n\t... and %d more", len(all)-i)
			break
		}
		fmt.Fprintf(&b, "\n\t%s", m)
	}
	return b.String()
}
