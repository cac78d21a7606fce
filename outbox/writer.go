package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/tracing"
)

// NumShards is how many shards the keys are hashed into. Relays split the
// shards between them; it is fixed by the schema (migration 001).
const NumShards = 32

// lockClass is the first half of the two-int advisory locks the writer takes
// per key; the second half is a hash of topic and key.
const lockClass int32 = 0x53424f58 // "SBOX"

// Execer is what Write needs: pgx.Tx satisfies it, and so do *pgx.Conn and
// *pgxpool.Pool, but pass the transaction of the business change: that is
// what makes the outbox atomic with it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// WriterConfig configures a Writer.
type WriterConfig struct {
	// Codec knows the Avro schemas of the messages. Required.
	Codec *Codec

	// Notify, when set, is called after every successful Write (the
	// transaction may not have committed yet). Pass Relay.Notify to wake a
	// relay running in the same process, which then polls at once and keeps
	// polling briefly until the commit shows. It costs the database nothing.
	Notify func()

	// NotifyCommitted, when set, is called by the function DeferNotify
	// returns, once the caller's transaction has committed. Pass
	// Relay.NotifyCommitted: the relay then polls once, when the rows are
	// visible, instead of polling at once and then often until the commit
	// shows. Defaults to Notify.
	NotifyCommitted func()

	// NotifyChannel, when set, makes every Write also run pg_notify on that
	// channel inside the transaction, for relays in other processes
	// (RelayConfig.ListenChannel). Postgres takes a global lock at commit for
	// every transaction that notified, which limits write throughput: see
	// BENCHMARKS.md before turning it on. Defaults to off.
	NotifyChannel string

	// Logger defaults to a logger that discards everything.
	Logger *slog.Logger

	// TracerProvider makes the spans of writes (an "outbox write" span,
	// child of the caller's span, whose context the messages carry).
	// Defaults to the global provider (otel.GetTracerProvider), a no-op
	// until one is set. A write under a span that is not recording starts
	// none.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns a copy of c with every unset field filled in.
func (c WriterConfig) WithDefaults() WriterConfig {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c WriterConfig) validate() error {
	if c.Codec == nil {
		return fmt.Errorf("%w: WriterConfig.Codec is required: build one with outbox.NewCodec(schemas...)", ErrInvalidConfig)
	}
	return nil
}

// Writer writes messages into the outbox inside the caller's transaction.
// It is safe for concurrent use.
type Writer struct {
	cfg    WriterConfig
	log    *slog.Logger
	tracer trace.Tracer
	// stored: StoreSchemas has put every schema of the codec into
	// sagabox.outbox_schemas, so writes need not carry them.
	stored atomic.Bool
}

// NewWriter checks the configuration and returns a writer. It does no I/O.
//
// The relay frames a message with the schema stored under its fingerprint
// in sagabox.outbox_schemas. Until StoreSchemas has stored the codec's
// schemas, every Write and Queue stores the schemas its messages use in
// the same statement (an insert that does nothing once they are there),
// so no message can wait for a schema nobody stored. Call StoreSchemas at
// start-up, after Migrate: writes then carry no schema rows and cost what
// they cost without them.
func NewWriter(cfg WriterConfig) (*Writer, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Writer{cfg: cfg, log: cfg.Logger.With("component", "outbox.writer"),
		tracer: tracing.Tracer(cfg.TracerProvider, "outbox")}, nil
}

// StoreSchemas stores every schema of the writer's codec in
// sagabox.outbox_schemas through db (the pool, or a connection: not a
// transaction that might roll back), where any relay finds them, and from
// then on writes leave the schema rows out. Run it at start-up after
// Migrate; running it again, or from several instances, is harmless.
func (w *Writer) StoreSchemas(ctx context.Context, db Execer) error {
	all := w.cfg.Codec.Schemas()
	fps, names, defs := schemaArgs(all)
	if _, err := db.Exec(ctx, `
INSERT INTO sagabox.outbox_schemas (fingerprint, name, definition)
SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[])
ON CONFLICT (fingerprint) DO NOTHING`, fps, names, defs); err != nil {
		return fmt.Errorf("outbox: store %d schemas: %w (did you run outbox.Migrate?)", len(all), err)
	}
	w.stored.Store(true)
	return nil
}

// schemaArgs returns the columns of ss sorted by fingerprint: writers
// inserting the same schema rows lock them in the same order.
func schemaArgs(ss []*Schema) (fps [][]byte, names, defs []string) {
	ss = slices.Clone(ss)
	slices.SortFunc(ss, func(a, b *Schema) int { return bytes.Compare(a.Fingerprint[:], b.Fingerprint[:]) })
	for _, s := range ss {
		fps, names, defs = append(fps, s.Fingerprint[:]), append(names, s.Name), append(defs, s.Definition)
	}
	return fps, names, defs
}

// insertSQL writes a whole Write call in one statement and one round trip.
//
// The locks CTE takes a transaction-scoped advisory lock per distinct
// (topic, key), in sorted order, before any id is drawn. Two transactions
// writing the same key therefore get their ids in commit order: the second
// one waits at the lock until the first commits, then draws a higher id. The
// relay publishes each key in id order, so that is commit order. Keyless
// messages take no lock.
const insertSQL = `
WITH locks AS MATERIALIZED (
	SELECT count(pg_advisory_xact_lock($1::int4, l)) AS n FROM unnest($2::int4[]) AS l
)
INSERT INTO sagabox.outbox (message_id, shard, topic, key, value, schema_fp, message_type,
	correlation_id, causation_id, saga_id, traceparent, tracestate, headers)
SELECT m.message_id, m.shard, m.topic, m.key, m.value, m.schema_fp, m.message_type,
	m.correlation_id, m.causation_id, m.saga_id, $3, $4, m.headers
FROM locks, unnest($5::uuid[], $6::int2[], $7::text[], $8::text[], $9::bytea[], $10::bytea[],
	$11::text[], $12::text[], $13::text[], $14::text[], $15::jsonb[]) WITH ORDINALITY
	AS m(message_id, shard, topic, key, value, schema_fp, message_type,
		correlation_id, causation_id, saga_id, headers, ord)
WHERE locks.n >= 0
ORDER BY m.ord`

// insertTracedSQL is insertSQL for messages that carry different trace
// contexts (Message.SpanContext): $3 and $4 are arrays, one entry per
// message, instead of one value for all.
const insertTracedSQL = `
WITH locks AS MATERIALIZED (
	SELECT count(pg_advisory_xact_lock($1::int4, l)) AS n FROM unnest($2::int4[]) AS l
)
INSERT INTO sagabox.outbox (message_id, shard, topic, key, value, schema_fp, message_type,
	correlation_id, causation_id, saga_id, traceparent, tracestate, headers)
SELECT m.message_id, m.shard, m.topic, m.key, m.value, m.schema_fp, m.message_type,
	m.correlation_id, m.causation_id, m.saga_id, m.traceparent, m.tracestate, m.headers
FROM locks, unnest($5::uuid[], $6::int2[], $7::text[], $8::text[], $9::bytea[], $10::bytea[],
	$11::text[], $12::text[], $13::text[], $14::text[], $15::jsonb[], $3::text[], $4::text[]) WITH ORDINALITY
	AS m(message_id, shard, topic, key, value, schema_fp, message_type,
		correlation_id, causation_id, saga_id, headers, traceparent, tracestate, ord)
WHERE locks.n >= 0
ORDER BY m.ord`

// insertOneKeyedSQL and insertOneKeylessSQL are the same write for the most
// common call, one message: scalar parameters cost the client and the server
// less than fifteen one-element arrays (see BENCHMARKS.md, write path).
const (
	insertOneKeyedSQL = `
WITH locks AS MATERIALIZED (SELECT pg_advisory_xact_lock($1::int4, $2::int4))
INSERT INTO sagabox.outbox (message_id, shard, topic, key, value, schema_fp, message_type,
	correlation_id, causation_id, saga_id, traceparent, tracestate, headers)
SELECT $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 FROM locks`
	insertOneKeylessSQL = `
INSERT INTO sagabox.outbox (message_id, shard, topic, key, value, schema_fp, message_type,
	correlation_id, causation_id, saga_id, traceparent, tracestate, headers)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`
)

// storeSchemasCTE stores the schema rows a write uses, in the write's own
// statement, for a writer whose StoreSchemas has not run. A
// data-modifying CTE runs whether or not the statement reads it. NOT EXISTS
// skips the insert (and so any wait on another writer's uncommitted insert
// of the same row) once the row is committed; ON CONFLICT covers the race
// of the first writes. %d is the number of the first of its three
// parameters, which follow the insert's own.
const storeSchemasCTE = `schemas AS (
	INSERT INTO sagabox.outbox_schemas (fingerprint, name, definition)
	SELECT s.fp, s.name, s.def FROM unnest($%d::bytea[], $%d::text[], $%d::text[]) AS s(fp, name, def)
	WHERE NOT EXISTS (SELECT 1 FROM sagabox.outbox_schemas o WHERE o.fingerprint = s.fp)
	ON CONFLICT (fingerprint) DO NOTHING
)`

// withSchemasSQL maps each insert to the same insert storing its schemas.
var withSchemasSQL = func() map[string]string {
	m := map[string]string{}
	for _, q := range []struct {
		sql    string
		params int
	}{{insertSQL, 15}, {insertTracedSQL, 15}, {insertOneKeyedSQL, 15}, {insertOneKeylessSQL, 13}} {
		p := q.params
		cte := fmt.Sprintf(storeSchemasCTE, p+1, p+2, p+3)
		if rest, ok := strings.CutPrefix(q.sql, "\nWITH "); ok {
			m[q.sql] = "\nWITH " + cte + ",\n" + rest
		} else {
			m[q.sql] = "\nWITH " + cte + q.sql
		}
	}
	return m
}()

// reservedHeaders may not be set through Message.Headers.
var reservedHeaders = map[string]bool{
	HeaderID: true, HeaderType: true, HeaderCorrelationID: true, HeaderCausationID: true,
	HeaderSagaID: true, HeaderTraceparent: true, HeaderTracestate: true,
}

// Write adds msgs to the outbox inside tx. Every message is validated and
// encoded first: if one is refused (a *MessageError naming the message and,
// for a bad value, the field), nothing is written and the transaction is
// untouched. The messages are published once tx commits, never if it rolls
// back. The trace context of ctx is stored with them. Write costs one round
// trip to the database; Queue costs none of its own.
func (w *Writer) Write(ctx context.Context, tx Execer, msgs ...Message) (err error) {
	if spans := w.traceWrite(&ctx, &msgs); spans != nil {
		defer func() { endSpans(spans, err) }()
	}
	st, err := w.statement(ctx, msgs)
	if err != nil || st.sql == "" {
		return err
	}
	if _, err := tx.Exec(ctx, st.sql, st.args...); err != nil {
		return insertError(err, len(msgs))
	}
	if w.cfg.NotifyChannel != "" {
		if _, err := tx.Exec(ctx, notifySQL, w.cfg.NotifyChannel); err != nil {
			return fmt.Errorf("outbox: notify %s: %w", w.cfg.NotifyChannel, err)
		}
	}
	w.afterWrite(ctx)
	return nil
}

// traceWrite starts the "outbox write" spans of a write: one child of
// ctx's span when it records, for the messages that take their trace
// context from ctx (then *ctx carries it), and one child of each distinct
// sampled Message.SpanContext (then the message carries its span's
// context; msgs is copied first, never changed in place). It returns no
// spans, and costs nothing, when nothing is traced.
func (w *Writer) traceWrite(ctx *context.Context, msgs *[]Message) []trace.Span {
	ms := *msgs
	var spans []trace.Span
	fromCtx := trace.SpanFromContext(*ctx).IsRecording()
	own := 0
	for i := range ms {
		if ms[i].SpanContext.IsValid() {
			own++
		}
	}
	if fromCtx && own < len(ms) {
		c, span := w.startWrite(*ctx, ms, func(m *Message) bool { return !m.SpanContext.IsValid() })
		if span != nil {
			*ctx, spans = c, append(spans, span)
		}
	}
	if own == 0 {
		return spans
	}
	var copied []Message
	for i := range ms {
		parent := ms[i].SpanContext
		if !parent.IsSampled() || (copied != nil && !copied[i].SpanContext.Equal(parent)) {
			continue // not traced, or done with an earlier message of its trace
		}
		_, span := w.startWrite(trace.ContextWithSpanContext(context.Background(), parent), ms[i:],
			func(m *Message) bool { return m.SpanContext.Equal(parent) })
		if span == nil {
			continue
		}
		if copied == nil {
			copied = slices.Clone(ms)
		}
		for j := i; j < len(copied); j++ {
			if copied[j].SpanContext.Equal(parent) {
				copied[j].SpanContext = span.SpanContext()
			}
		}
		spans = append(spans, span)
	}
	if copied != nil {
		*msgs = copied
	}
	return spans
}

// startWrite starts one "outbox write" span under ctx for the messages of
// ms that mine selects; nil when it would not record.
func (w *Writer) startWrite(ctx context.Context, ms []Message, mine func(*Message) bool) (context.Context, trace.Span) {
	c, span := w.tracer.Start(ctx, "outbox write", trace.WithSpanKind(trace.SpanKindProducer))
	if !span.IsRecording() {
		span.End()
		return ctx, nil
	}
	topic, saga, n := "", "", 0
	for i := range ms {
		if !mine(&ms[i]) {
			continue
		}
		if n == 0 {
			topic, saga = ms[i].Topic, ms[i].SagaID
		} else if ms[i].Topic != topic {
			topic = "*" // several destinations
		}
		n++
	}
	if topic == "*" {
		topic = ""
	}
	span.SetAttributes(tracing.Messaging(tracing.OpCreate, "create", topic)...)
	span.SetAttributes(tracing.BatchCount(n), tracing.DBSystemPostgres,
		tracing.DBCollection("sagabox.outbox"), tracing.DBOperation("INSERT"))
	if saga != "" {
		span.SetAttributes(tracing.SagaID.String(saga))
	}
	return c, span
}

func endSpans(spans []trace.Span, err error) {
	for _, s := range spans {
		endSpan(s, err)
	}
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Queue validates and encodes msgs like Write, then appends their insert to
// b instead of running it, so that the outbox write travels to the database
// in the same round trip as the business statements queued in b. Send b
// inside the business transaction (tx.SendBatch(ctx, b)) and check its
// result: the messages exist if and only if that transaction commits. A
// refused message returns its error here and queues nothing.
func (w *Writer) Queue(ctx context.Context, b *pgx.Batch, msgs ...Message) (err error) {
	if spans := w.traceWrite(&ctx, &msgs); spans != nil {
		defer func() { endSpans(spans, err) }()
	}
	st, err := w.statement(ctx, msgs)
	if err != nil || st.sql == "" {
		return err
	}
	n := len(msgs)
	b.Queue(st.sql, st.args...).Fn = func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return insertError(err, n)
		}
		return nil
	}
	if w.cfg.NotifyChannel != "" {
		b.Queue(notifySQL, w.cfg.NotifyChannel)
	}
	w.afterWrite(ctx)
	return nil
}

const notifySQL = `SELECT pg_notify($1, '')`

func (w *Writer) afterWrite(ctx context.Context) {
	if d, ok := ctx.Value(deferKey{}).(*deferredNotify); ok && d.w == w {
		d.wrote.Store(true)
		return
	}
	if w.cfg.Notify != nil {
		w.cfg.Notify()
	}
}

type deferKey struct{}

type deferredNotify struct {
	w     *Writer
	wrote atomic.Bool
}

// DeferNotify is for code that commits its own transaction: under the
// context it returns, Write and Queue of w do not call WriterConfig.Notify;
// call the function it returns once the transaction has committed, and it
// calls WriterConfig.NotifyCommitted (or Notify) if anything was written.
// A relay woken before the commit finds nothing and has to poll again and
// again until the commit shows; woken after it, one poll finds the rows
// (see BENCHMARKS.md, "Waking the relay"). The saga orchestrator and
// participants write this way. Calling the function after a rollback costs
// one empty poll; not calling it leaves the rows to the next poll.
//
//	ctx, committed := writer.DeferNotify(ctx)
//	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return writer.Write(ctx, tx, msg) })
//	if err == nil {
//		committed()
//	}
func (w *Writer) DeferNotify(ctx context.Context) (context.Context, func()) {
	d := &deferredNotify{w: w}
	return context.WithValue(ctx, deferKey{}, d), func() {
		if !d.wrote.Load() {
			return
		}
		if w.cfg.NotifyCommitted != nil {
			w.cfg.NotifyCommitted()
		} else if w.cfg.Notify != nil {
			w.cfg.Notify()
		}
	}
}

func insertError(err error, n int) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return fmt.Errorf("%w: a message with one of these IDs was written before: %v", ErrInvalidMessage, err)
	}
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
		return fmt.Errorf("outbox: write: %w (run outbox.Migrate first)", err)
	}
	return fmt.Errorf("outbox: write %d messages: %w", n, err)
}

// statement is one insert of a Write or Queue call.
type statement struct {
	sql  string
	args []any
}

// statement validates and encodes msgs and builds their insert, with the
// trace context of ctx. It returns an empty statement for no messages.
func (w *Writer) statement(ctx context.Context, msgs []Message) (statement, error) {
	tp, ts := tracing.FromContext(ctx)
	return w.buildStatement(msgs, tp, ts)
}

func (w *Writer) buildStatement(msgs []Message, tp, ts string) (statement, error) {
	if len(msgs) == 0 {
		return statement{}, nil
	}
	n := len(msgs)
	var used []*Schema // the schemas to store with the write, until StoreSchemas ran
	storing := !w.stored.Load()
	var (
		ids      = make([][16]byte, n) // not uuid.UUID: pgx would format and parse each through driver.Valuer
		shards   = make([]int16, n)
		topics   = make([]string, n)
		keys     = make([]string, n)
		values   = make([][]byte, n)
		fps      = make([][]byte, n)
		types    = make([]string, n)
		corrs    = make([]string, n)
		causes   = make([]string, n)
		sagas    = make([]string, n)
		headers  = make([]string, n)
		lockKeys = make([]int32, 0, n)
		// Per-message trace contexts, allocated only when a message
		// carries one of its own (Message.SpanContext).
		tps, tss []string
	)
	for i, m := range msgs {
		if err := w.prepare(i, m); err != nil {
			return statement{}, err
		}
		s, value, err := w.cfg.Codec.Encode(m.Type, m.Value)
		if err != nil {
			typ := m.Type
			if s != nil {
				typ = s.Name
			}
			return statement{}, &MessageError{Index: i, Topic: m.Topic, Type: typ, Err: err}
		}
		id := m.ID
		if id == uuid.Nil {
			id, err = uuid.NewV7()
			if err != nil {
				return statement{}, fmt.Errorf("outbox: new message id: %w", err)
			}
		}
		h := "{}"
		if len(m.Headers) > 0 {
			b, _ := json.Marshal(m.Headers)
			h = string(b)
		}
		if storing && !slices.Contains(used, s) {
			used = append(used, s)
		}
		ids[i], shards[i], topics[i], keys[i] = id, shardOf(m.Key, id), m.Topic, m.Key
		values[i], fps[i], types[i] = value, s.Fingerprint[:], s.Name
		corrs[i], causes[i], sagas[i], headers[i] = m.CorrelationID, m.CausationID, m.SagaID, h
		if m.Key != "" {
			lockKeys = append(lockKeys, lockKeyOf(m.Topic, m.Key))
		}
		if m.SpanContext.IsValid() {
			if tps == nil {
				tps, tss = make([]string, n), make([]string, n)
				for j := range i {
					tps[j], tss[j] = tp, ts
				}
			}
			tps[i], tss[i] = tracing.Format(m.SpanContext)
		} else if tps != nil {
			tps[i], tss[i] = tp, ts
		}
	}
	if tps != nil && allEqual(tps) && allEqual(tss) {
		tp, ts, tps = tps[0], tss[0], nil // one trace after all: the plain insert
	}
	var st statement
	switch {
	case n == 1 && keys[0] != "":
		st = statement{insertOneKeyedSQL, []any{lockClass, lockKeys[0], ids[0], shards[0], topics[0], keys[0],
			values[0], fps[0], types[0], corrs[0], causes[0], sagas[0], tp, ts, headers[0]}}
	case n == 1:
		st = statement{insertOneKeylessSQL, []any{ids[0], shards[0], topics[0], keys[0],
			values[0], fps[0], types[0], corrs[0], causes[0], sagas[0], tp, ts, headers[0]}}
	case tps != nil:
		slices.Sort(lockKeys)
		lockKeys = slices.Compact(lockKeys)
		st = statement{insertTracedSQL, []any{lockClass, lockKeys, tps, tss,
			ids, shards, topics, keys, values, fps, types, corrs, causes, sagas, headers}}
	default:
		slices.Sort(lockKeys)
		lockKeys = slices.Compact(lockKeys)
		st = statement{insertSQL, []any{lockClass, lockKeys, tp, ts,
			ids, shards, topics, keys, values, fps, types, corrs, causes, sagas, headers}}
	}
	if storing {
		sfps, names, defs := schemaArgs(used)
		st = statement{withSchemasSQL[st.sql], append(st.args, sfps, names, defs)}
	}
	return st, nil
}

func allEqual(ss []string) bool {
	for _, s := range ss[1:] {
		if s != ss[0] {
			return false
		}
	}
	return true
}

func (w *Writer) prepare(i int, m Message) error {
	bad := func(format string, a ...any) error {
		return &MessageError{Index: i, Topic: m.Topic, Type: m.Type, Err: fmt.Errorf(format, a...)}
	}
	switch {
	case strings.TrimSpace(m.Topic) == "":
		return bad("Topic is empty")
	case len(m.Topic) > 249:
		return bad("Topic is longer than Kafka's 249 characters")
	case m.Value == nil:
		return bad("Value is nil")
	}
	for k := range m.Headers {
		if reservedHeaders[k] {
			return bad("header %q is reserved: use the Message field instead", k)
		}
	}
	return nil
}

// shardOf hashes a key onto a shard. Keyless messages spread by their ID.
func shardOf(key string, id uuid.UUID) int16 {
	h := fnv.New32a()
	if key == "" {
		_, _ = h.Write(id[:])
	} else {
		_, _ = h.Write([]byte(key))
	}
	return int16(h.Sum32() % NumShards)
}

func lockKeyOf(topic, key string) int32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(key))
	return int32(h.Sum32())
}
