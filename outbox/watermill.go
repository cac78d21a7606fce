package outbox

import (
	stdsql "database/sql"
	"errors"
	"fmt"
	"github.com/sagabox/sagabox/internal/tracing"
	"go.opentelemetry.io/otel/trace"
	"reflect"
	"strings"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5/pgconn"
)

// Watermill users get the outbox without changing their code: a
// message.Publisher that writes into sagabox.outbox inside a database/sql
// transaction, with exactly what Writer.Write does (Avro validation, per-key
// advisory locks before the id is drawn, the same shard, the trace context),
// and a cqrs marshaler that encodes events as Avro. A cqrs EventBus, or a
// router handler, publishing through it writes rows the relay sends to Kafka,
// next to the rows pgx code writes with Writer.Write.
//
// The watermill message maps onto the outbox row like this:
//
//	msg.UUID                     message_id (must be a UUID)
//	topic of Publish             topic
//	msg.Payload                  value: Avro binary, without the Confluent header
//	metadata MetadataKey         key ("kafka_key")
//	metadata HeaderType          message_type, the Avro full name ("message_type")
//	metadata HeaderCorrelationID correlation_id (watermill's CorrelationID middleware uses the same name)
//	metadata HeaderCausationID   causation_id
//	metadata HeaderSagaID        saga_id
//	msg.Context()                traceparent, tracestate (or metadata of those names), per message
//	any other metadata           extra Kafka headers
//
// Metadata that describes a record read from Kafka (HeaderID,
// MetadataTopic, MetadataPartition, MetadataOffset, as KafkaUnmarshaler sets
// them) is not copied.

// watermillDropped are metadata keys the publisher does not turn into headers.
var watermillDropped = map[string]bool{
	MetadataKey: true, HeaderType: true, HeaderCorrelationID: true, HeaderCausationID: true,
	HeaderSagaID: true, HeaderTraceparent: true, HeaderTracestate: true,
	HeaderID: true, MetadataTopic: true, MetadataPartition: true, MetadataOffset: true,
}

// WatermillSchemaAdapter is a watermill-sql SchemaAdapter that writes into
// sagabox.outbox. Only its InsertQuery is meant to be used, by watermill-sql's
// Publisher (NewWatermillPublisher wires it): the table is read by the sagabox
// relay, which owns ordering, retries and deletion, never by watermill-sql's
// Subscriber. Its select side fails with an error that says so.
//
// The query it builds needs the pgx database/sql driver
// (github.com/jackc/pgx/v5/stdlib): it passes Go slices as Postgres arrays.
type WatermillSchemaAdapter struct {
	w *Writer
}

// NewWatermillSchemaAdapter returns the adapter for w's codec.
func NewWatermillSchemaAdapter(w *Writer) (*WatermillSchemaAdapter, error) {
	if w == nil {
		return nil, errors.New("outbox: NewWatermillSchemaAdapter needs a *Writer: build one with outbox.NewWriter")
	}
	return &WatermillSchemaAdapter{w: w}, nil
}

var _ wsql.SchemaAdapter = (*WatermillSchemaAdapter)(nil)

// errWatermillSubscribe is what every read-side method of the adapter says.
const errWatermillSubscribe = "outbox: sagabox.outbox is read by the sagabox relay (outbox.NewRelay), not by a watermill-sql Subscriber"

// InsertQuery builds the same single statement Writer.Write runs. A message
// that is refused (no UUID, no type, a payload that does not fit its schema)
// fails the whole call with a *MessageError and nothing is written.
func (a *WatermillSchemaAdapter) InsertQuery(topic string, msgs message.Messages) (wsql.Query, error) {
	st, err := a.w.watermillStatement(topic, msgs)
	if err != nil {
		return wsql.Query{}, err
	}
	return wsql.Query{Query: st.sql, Args: st.args}, nil
}

// SelectQuery returns a query that fails, naming the relay: watermill-sql's
// Subscriber must not read the outbox.
func (a *WatermillSchemaAdapter) SelectQuery(string, string, wsql.OffsetsAdapter) wsql.Query {
	// The cast fails and Postgres puts the text in the error message.
	return wsql.Query{Query: `SELECT CAST($1::text AS int)`, Args: []any{errWatermillSubscribe}}
}

// UnmarshalMessage always fails: see SelectQuery.
func (a *WatermillSchemaAdapter) UnmarshalMessage(wsql.Scanner) (wsql.Row, error) {
	return wsql.Row{}, errors.New(errWatermillSubscribe)
}

// SchemaInitializingQueries returns nothing: outbox.Migrate creates the
// table, once for every topic.
func (a *WatermillSchemaAdapter) SchemaInitializingQueries(string) []wsql.Query { return nil }

// SubscribeIsolationLevel is unused (see SelectQuery).
func (a *WatermillSchemaAdapter) SubscribeIsolationLevel() stdsql.IsolationLevel {
	return stdsql.LevelDefault
}

// watermillStatement turns watermill messages into the insert Writer.Write
// runs, with the same validation.
func (w *Writer) watermillStatement(topic string, msgs message.Messages) (statement, error) {
	out := make([]Message, len(msgs))
	for i, wm := range msgs {
		if wm == nil {
			return statement{}, &MessageError{Index: i, Topic: topic, Err: errors.New("watermill message is nil")}
		}
		md := wm.Metadata
		m := Message{
			Topic:         topic,
			Key:           md.Get(MetadataKey),
			Type:          md.Get(HeaderType),
			Value:         RawValue(wm.Payload),
			CorrelationID: md.Get(HeaderCorrelationID),
			CausationID:   md.Get(HeaderCausationID),
			SagaID:        md.Get(HeaderSagaID),
		}
		bad := func(format string, a ...any) error {
			return &MessageError{Index: i, Topic: topic, Type: m.Type, Err: fmt.Errorf(format, a...)}
		}
		id, err := uuid.Parse(wm.UUID)
		if err != nil || id == uuid.Nil {
			return statement{}, bad("watermill message UUID %q is not a UUID: the outbox uses it as the message ID consumers deduplicate on (watermill.NewUUID and the AvroMarshaler make UUIDs)", wm.UUID)
		}
		m.ID = id
		if m.Type == "" {
			return statement{}, bad("metadata %q is empty: set it to the Avro full name of the payload's schema (outbox.AvroMarshaler does)", HeaderType)
		}
		for k, v := range md {
			if watermillDropped[k] {
				continue
			}
			if m.Headers == nil {
				m.Headers = map[string]string{}
			}
			m.Headers[k] = v
		}
		// Each message keeps its own trace: its context's span, or the
		// trace context metadata it came with.
		if m.SpanContext = trace.SpanContextFromContext(wm.Context()); !m.SpanContext.IsValid() {
			m.SpanContext = tracing.Parse(md.Get(HeaderTraceparent), md.Get(HeaderTracestate))
		}
		out[i] = m
	}
	return w.buildStatement(out, "", "")
}

// WatermillPublisher is a watermill message.Publisher that adds messages to
// the outbox inside a database/sql transaction. Build one per transaction
// (it is cheap) with NewWatermillPublisher.
type WatermillPublisher struct {
	pub *wsql.Publisher
	db  wsql.ContextExecutor
	w   *Writer
}

var _ message.Publisher = (*WatermillPublisher)(nil)

// NewWatermillPublisher returns a publisher writing into the outbox through
// db, which should be the *sql.Tx of the business change (opened with the
// pgx driver, github.com/jackc/pgx/v5/stdlib): the messages are then
// published to Kafka once it commits, and never if it rolls back. A *sql.DB
// also works, each Publish then commits on its own, which gives up that
// atomicity.
//
// It is watermill-sql's Publisher with a WatermillSchemaAdapter, plus what
// Writer.Write does after the insert: w's Notify hook and NotifyChannel.
func NewWatermillPublisher(db wsql.ContextExecutor, w *Writer) (*WatermillPublisher, error) {
	if db == nil {
		return nil, errors.New("outbox: NewWatermillPublisher needs the *sql.Tx of the business change")
	}
	adapter, err := NewWatermillSchemaAdapter(w)
	if err != nil {
		return nil, err
	}
	pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: adapter}, nil)
	if err != nil {
		return nil, fmt.Errorf("outbox: watermill-sql publisher: %w", err)
	}
	return &WatermillPublisher{pub: pub, db: db, w: w}, nil
}

// Publish adds msgs to the outbox, all or none. A refused message gives an
// error matching ErrInvalidMessage with a *MessageError naming it and, for a
// payload that does not fit its schema, the field.
func (p *WatermillPublisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := p.pub.Publish(topic, msgs...); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return fmt.Errorf("%w: a message with one of these UUIDs was written before: %v", ErrInvalidMessage, err)
		}
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return fmt.Errorf("outbox: watermill publish: %w (run outbox.Migrate first)", err)
		}
		return fmt.Errorf("outbox: watermill publish %d messages to %s: %w", len(msgs), topic, err)
	}
	if ch := p.w.cfg.NotifyChannel; ch != "" {
		ctx := msgs[0].Context()
		if _, err := p.db.ExecContext(ctx, `SELECT pg_notify($1, '')`, ch); err != nil {
			return fmt.Errorf("outbox: notify %s: %w", ch, err)
		}
	}
	if p.w.cfg.Notify != nil {
		p.w.cfg.Notify()
	}
	return nil
}

// Close waits for Publish calls in flight and refuses later ones. It does
// not touch the transaction.
func (p *WatermillPublisher) Close() error { return p.pub.Close() }

// AvroMarshaler is a watermill cqrs.CommandEventMarshaler that encodes
// commands and events as Avro binary with a Codec, so that a cqrs EventBus or
// CommandBus publishing through a WatermillPublisher writes outbox rows. Its
// Unmarshal decodes the Confluent-framed values the relay publishes, with a
// Decoder, so the same marshaler serves cqrs processors reading Kafka through
// watermill-kafka and KafkaUnmarshaler.
//
// The command or event name is the Avro full name of its schema, found, in
// order: by TypeName; by the schema the value carries (a Schema() avro.Schema
// method, as hamba/avro's generator makes); by the one Codec schema whose
// short name is the Go type's name.
type AvroMarshaler struct {
	// Codec encodes the values. Required for Marshal.
	Codec *Codec
	// Decoder decodes framed values. Required for Unmarshal.
	Decoder *Decoder
	// TypeName, when set and not returning "", gives the Avro full name of v.
	TypeName func(v any) string
	// Key, when set, gives the Kafka key of v (usually its aggregate ID), so
	// messages of one key keep their commit order. Defaults to no key.
	Key func(v any) string
	// NewUUID defaults to a new UUIDv7, as Writer.Write uses.
	NewUUID func() string
}

var _ cqrs.CommandEventMarshaler = AvroMarshaler{}

// Marshal encodes v and sets the HeaderType metadata (and MetadataKey when
// Key gives one). An error names the field that does not fit the schema.
func (m AvroMarshaler) Marshal(v any) (*message.Message, error) {
	if m.Codec == nil {
		return nil, errors.New("outbox: AvroMarshaler.Codec is required to marshal")
	}
	typ, err := m.typeOf(v)
	if err != nil {
		return nil, err
	}
	s, b, err := m.Codec.Encode(typ, v)
	if err != nil {
		return nil, fmt.Errorf("%w: %T as %s: %w", ErrInvalidMessage, v, typ, err)
	}
	id := ""
	if m.NewUUID != nil {
		id = m.NewUUID()
	} else {
		u, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("outbox: new message id: %w", err)
		}
		id = u.String()
	}
	msg := message.NewMessage(id, b)
	msg.Metadata.Set(HeaderType, s.Name)
	if m.Key != nil {
		if k := m.Key(v); k != "" {
			msg.Metadata.Set(MetadataKey, k)
		}
	}
	return msg, nil
}

// Unmarshal decodes a Confluent-framed Avro payload into v (a pointer).
func (m AvroMarshaler) Unmarshal(msg *message.Message, v any) error {
	if m.Decoder == nil {
		return errors.New("outbox: AvroMarshaler.Decoder is required to unmarshal")
	}
	_, err := m.Decoder.Decode(msg.Payload, v)
	return err
}

// Name returns the Avro full name of v's schema, or the Go type name when
// there is none (Marshal then fails).
func (m AvroMarshaler) Name(v any) string {
	if typ, err := m.typeOf(v); err == nil {
		return typ
	}
	return cqrs.FullyQualifiedStructName(v)
}

// NameFromMessage returns the HeaderType metadata, which Marshal sets and
// KafkaUnmarshaler copies from the record's header.
func (m AvroMarshaler) NameFromMessage(msg *message.Message) string {
	return msg.Metadata.Get(HeaderType)
}

func (m AvroMarshaler) typeOf(v any) (string, error) {
	if m.TypeName != nil {
		if t := m.TypeName(v); t != "" {
			return t, nil
		}
	}
	if sd, ok := v.(selfDescribing); ok {
		if named, ok := sd.Schema().(avro.NamedSchema); ok {
			return named.FullName(), nil
		}
	}
	if m.Codec != nil {
		goName := cqrs.StructName(v)
		found := ""
		for _, s := range m.Codec.Schemas() {
			short := s.Name[strings.LastIndex(s.Name, ".")+1:]
			if short != goName {
				continue
			}
			if found != "" {
				return "", fmt.Errorf("%w: %T matches both %s and %s: set AvroMarshaler.TypeName", ErrUnknownSchema, v, found, s.Name)
			}
			found = s.Name
		}
		if found != "" {
			return found, nil
		}
	}
	t := reflect.TypeOf(v)
	return "", fmt.Errorf("%w: no Avro schema for %v: set AvroMarshaler.TypeName, give the type a Schema() avro.Schema method, or name it after its schema", ErrUnknownSchema, t)
}
