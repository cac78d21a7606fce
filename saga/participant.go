package saga

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/tracing"
	"github.com/sagabox/sagabox/outbox"
)

// Command is a saga command as a participant sees it.
type Command struct {
	SagaID   uuid.UUID
	SagaType string
	Step     int
	StepName string
	// Attempt counts the step's (or compensation's) attempts from 1. It is
	// 0 for a compensation sent outside them, because the action's success
	// arrived after the saga had compensated past it (LateCompensated).
	Attempt      int
	Compensation bool
	// Name is the command, such as "reserve_stock".
	Name          string
	ReplyTopic    string
	PayloadType   string
	Payload       []byte
	MessageID     string
	CorrelationID string

	codec *outbox.Codec
	// framed is the consumed value (a payload record in the header
	// format), decoded by decoder with its writer's schema; nil for a
	// command from an envelope or built in a test.
	framed  []byte
	decoder *outbox.Decoder
	// trace is the record's trace context; span the command's process
	// span (nil when the record carried no trace context).
	trace trace.SpanContext
	span  trace.Span
	// What the command came to, for its span and metrics.
	outcome   string
	duplicate bool
}

// Decode decodes the command's payload into v with the schema named
// PayloadType, which the participant's codec must know. A consumed command
// is decoded with the schema its writer registered (by the record's schema
// ID), resolved against the codec's, so an orchestrator on an older or newer
// BACKWARD-compatible version of the payload is understood.
func (c *Command) Decode(v any) error {
	if c.framed != nil && c.decoder != nil {
		return decodeFramed(c.decoder, c.PayloadType, c.framed, v)
	}
	return decodePayload(c.codec, c.PayloadType, c.Payload, v)
}

// Payload is a reply payload with the name of its schema, for a value that
// does not name its schema itself (a generated type with a Schema method
// does: return it as it is).
type Payload struct {
	// Type is the Avro full name of Value's schema, which the codec must
	// know.
	Type  string
	Value any
}

// HandlerFunc runs a command's business change in tx, inside a savepoint
// (tx's Commit and Rollback return an error: do not end it yourself). The
// savepoint travels with the handler's first statement, so a handler that
// never touches the database pays nothing for it.
//
// Return the reply payload for success: nil for none, a generated type
// (avrogen -encoders, whose Schema method names its schema), or a Payload
// naming the schema; the codec must know it. Return an error wrapping
// ErrRejected (Reject) for a final "no", or any other error for a transient
// failure: then nothing is kept and the orchestrator retries after a
// backoff.
type HandlerFunc func(ctx context.Context, tx pgx.Tx, cmd *Command) (any, error)

// Handler is the handler of one command, registered with NewParticipant in
// ParticipantConfig.Handlers. Build it with HandleCommand, or HandleFunc
// for a handler that reads the raw command.
type Handler struct {
	command string
	// payloadType is the schema HandleCommand's payload type names, if it
	// names one: NewParticipant checks that the codec knows it.
	payloadType string
	fn          HandlerFunc
}

// Command is the command h handles.
func (h Handler) Command() string { return h.command }

// HandleFunc is the Handler of command that runs fn on the raw command
// (Command.Decode reads its payload).
func HandleFunc(command string, fn HandlerFunc) Handler {
	return Handler{command: command, fn: fn}
}

// HandleCommand is the Handler of command that decodes the command's
// payload into a C, its Go type (a generated type, or a struct with avro
// tags), and calls fn with it. A payload that does not decode into a C,
// or whose schema is not C's, is rejected (the reason says why): sending
// it again cannot help. fn returns the reply payload as a HandlerFunc does.
//
//	saga.HandleCommand(schemas.CommandReserveStock,
//		func(ctx context.Context, tx pgx.Tx, cmd *saga.Command, p schemas.ReserveStock) (any, error) {
//			...
//			return &schemas.StockReserved{OrderID: p.OrderID}, nil
//		})
func HandleCommand[C any](command string, fn func(ctx context.Context, tx pgx.Tx, cmd *Command, payload C) (any, error)) Handler {
	want := schemaName(new(C))
	return Handler{command: command, payloadType: want, fn: func(ctx context.Context, tx pgx.Tx, cmd *Command) (any, error) {
		var payload C
		if want != "" && cmd.PayloadType != want {
			return nil, Reject(fmt.Sprintf("%s: the payload is a %q, want a %q", command, cmd.PayloadType, want))
		}
		if err := cmd.Decode(&payload); err != nil {
			return nil, Reject(fmt.Sprintf("%s: the payload does not decode into a %T: %v", command, payload, err))
		}
		return fn(ctx, tx, cmd, payload)
	}}
}

// schemaName is the full name of the schema v carries, or "".
func schemaName(v any) string {
	sd, ok := v.(interface{ Schema() avro.Schema })
	if !ok {
		return ""
	}
	if named, ok := sd.Schema().(avro.NamedSchema); ok {
		return named.FullName()
	}
	return ""
}

// Defaults of ParticipantConfig (Retention and CleanupInterval share
// Config's: DefaultRetention, DefaultCleanupInterval).
const (
	DefaultParticipantBatch = 64
)

// ParticipantConfig configures a Participant. The database, the outbox
// writer, the codec, Kafka and the registry come from the Runtime.
type ParticipantConfig struct {
	// Name identifies the participant in the inbox (and defaults its
	// consumer group). Required.
	Name string
	// Handlers are the participant's commands (actions and compensations),
	// one Handler per command name. A command without a handler is
	// rejected. Required: at least one.
	Handlers []Handler

	// CommandTopic is the topic Run consumes. Required by Run.
	CommandTopic string
	// ConsumerGroup defaults to "sagabox-participant-" + Name.
	ConsumerGroup string
	// DeadLetterTopic receives commands that cannot be decoded, with the
	// reason. Defaults to CommandTopic + ".dlq".
	DeadLetterTopic string
	// OverwriteSaramaConfig replaces SaramaConfig().
	OverwriteSaramaConfig *sarama.Config
	// NackResendSleep is the wait before a command that failed for a
	// transient reason (database or registry down) is handled again.
	// Defaults to DefaultNackResendSleep.
	NackResendSleep time.Duration
	// Batch is the most commands run in one transaction (each handler in
	// its own savepoint) by Run: commands arriving on different partitions
	// at the same moment share a commit and its round trips. Keep it at most
	// 64: each handler that writes is a subtransaction, and while a
	// transaction has more than 64 Postgres slows every session's
	// snapshots down. Defaults to DefaultParticipantBatch.
	Batch int
	// Retention is how long Run keeps inbox entries (and finished sagas,
	// when the participant shares its database with an orchestrator) before
	// deleting them every CleanupInterval. An entry must outlive any
	// redelivery of its command. Defaults to DefaultRetention.
	Retention time.Duration
	// DisableCleanup keeps everything: Run deletes nothing.
	DisableCleanup bool
	// CleanupInterval defaults to DefaultCleanupInterval.
	CleanupInterval time.Duration
	// TracerProvider makes the "process" span of each command whose record
	// carries a trace context, a child of it; the handler's ctx carries
	// the span and the reply carries its context. Defaults to the
	// Runtime's (TracerProviderRuntime), else the global provider.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns a copy of c with every unset field defaulted.
func (c ParticipantConfig) WithDefaults() ParticipantConfig {
	if c.ConsumerGroup == "" && c.Name != "" {
		c.ConsumerGroup = "sagabox-participant-" + c.Name
	}
	if c.DeadLetterTopic == "" && c.CommandTopic != "" {
		c.DeadLetterTopic = c.CommandTopic + ".dlq"
	}
	if c.NackResendSleep == 0 {
		c.NackResendSleep = DefaultNackResendSleep
	}
	if c.Batch == 0 {
		c.Batch = DefaultParticipantBatch
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
	return c
}

func (c ParticipantConfig) validate(codec *outbox.Codec) error {
	switch {
	case c.Name == "":
		return fmt.Errorf("%w: ParticipantConfig.Name is required", ErrInvalidConfig)
	case len(c.Handlers) == 0:
		return fmt.Errorf("%w: ParticipantConfig.Handlers is empty: add a saga.HandleCommand per command", ErrInvalidConfig)
	case c.NackResendSleep < 0:
		return fmt.Errorf("%w: ParticipantConfig.NackResendSleep is negative", ErrInvalidConfig)
	case c.Batch < 0:
		return fmt.Errorf("%w: ParticipantConfig.Batch is negative", ErrInvalidConfig)
	case c.Retention < 0:
		return fmt.Errorf("%w: ParticipantConfig.Retention is negative: set DisableCleanup to keep everything", ErrInvalidConfig)
	case c.CleanupInterval < 0:
		return fmt.Errorf("%w: ParticipantConfig.CleanupInterval is negative", ErrInvalidConfig)
	}
	seen := map[string]bool{}
	for i, h := range c.Handlers {
		switch {
		case h.fn == nil || h.command == "":
			return fmt.Errorf("%w: ParticipantConfig.Handlers[%d] is empty: build it with saga.HandleCommand", ErrInvalidConfig, i)
		case seen[h.command]:
			return fmt.Errorf("%w: ParticipantConfig.Handlers: command %q has two handlers", ErrInvalidConfig, h.command)
		}
		seen[h.command] = true
		if h.payloadType != "" {
			if _, ok := codec.Schema(h.payloadType); !ok {
				return fmt.Errorf("%w: ParticipantConfig.Handlers: the codec does not know %s, the payload of %q", ErrInvalidConfig,
					h.payloadType, h.command)
			}
		}
	}
	return nil
}

// Participant runs saga commands idempotently. For each command, the
// business change, the reply and an inbox entry keyed on (saga, step, phase)
// commit in one transaction, so:
//   - a redelivered or retried command has no second effect and gets the
//     stored reply again;
//   - a compensation of an action that never ran succeeds and does nothing,
//     and records the action as cancelled;
//   - an action arriving after its compensation does nothing (it is
//     answered "rejected").
//
// A batch of commands costs two round trips plus the handlers'
// statements: begin, with one query reading the inbox entries of every
// command (and of the actions of its compensations); the handlers, each in
// a savepoint that travels with its first statement (its release, or
// rollback after a failure, with the next statement); one round trip
// inserting the new inbox entries and every reply into the outbox, with
// commit. Two deliveries
// of one command at the same moment may both run the handler, but only one
// commits: the other's inbox insert fails on the first's entry, its
// transaction rolls back, and it is run again alone, finding the stored
// reply.
//
// The participanttest package runs a participant's handlers without Kafka
// and checks these properties against the handlers' real effects.
type Participant struct {
	cfg      ParticipantConfig
	pool     *pgxpool.Pool
	writer   *outbox.Writer
	codec    *outbox.Codec
	brokers  []string
	log      *slog.Logger
	handlers map[string]HandlerFunc
	decoder  *outbox.Decoder
	batch    *batcher[*Command]
	once     runOnce
	tracer   trace.Tracer
	cm       *consumerMetrics
	pm       *participantMetrics
}

// NewParticipant checks cfg, fills its defaults and attaches the
// participant's Run to rt, as "saga.participant." + Name, so that the
// client runs it. Tests may call Run (or Process) themselves instead.
func NewParticipant(rt Runtime, cfg ParticipantConfig) (*Participant, error) {
	if rt == nil {
		return nil, fmt.Errorf("%w: NewParticipant needs a Runtime (a sagabox.Client)", ErrInvalidConfig)
	}
	cfg = cfg.WithDefaults()
	if rt.Pool() == nil {
		return nil, fmt.Errorf("%w: the Runtime has no Pool", ErrInvalidConfig)
	}
	if rt.Writer() == nil {
		return nil, fmt.Errorf("%w: the Runtime has no Writer", ErrInvalidConfig)
	}
	if err := checkCodec(rt.Codec(), "the Runtime's Codec"); err != nil {
		return nil, err
	}
	if err := cfg.validate(rt.Codec()); err != nil {
		return nil, err
	}
	log := rt.Logger()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Participant{cfg: cfg, pool: rt.Pool(), writer: rt.Writer(), codec: rt.Codec(), brokers: rt.Brokers(),
		handlers: make(map[string]HandlerFunc, len(cfg.Handlers)),
		log:      log.With("component", "saga.participant", "participant", cfg.Name),
		tracer:   tracerOf(cfg.TracerProvider, rt)}
	names := make([]string, 0, len(cfg.Handlers))
	for _, h := range cfg.Handlers {
		p.handlers[h.command] = h.fn
		names = append(names, h.command)
	}
	var err error
	if p.cm, err = newConsumerMetrics(rt.Registerer(), p.consumerName()); err != nil {
		return nil, err
	}
	if p.pm, err = newParticipantMetrics(rt.Registerer(), cfg.Name, names); err != nil {
		return nil, err
	}
	if reg := rt.Registry(); reg != nil {
		p.decoder = outbox.NewDecoder(reg, p.codec)
	}
	p.batch = newBatcher(batchWorkers, cfg.Batch, p.processBatch)
	if err := rt.Attach("saga.participant."+cfg.Name, p.Run); err != nil {
		return nil, fmt.Errorf("saga: participant %s: %w", cfg.Name, err)
	}
	return p, nil
}

// Process runs one command: see Participant. It returns an error only when
// the database failed; then nothing was written and the command should be
// delivered again.
func (p *Participant) Process(ctx context.Context, cmd *Command) error {
	return p.processBatch(ctx, []*Command{cmd})[0]
}

// processBatch runs commands in one transaction, each handler in a
// savepoint. If the transaction fails (a deadlock with another batch, a
// concurrent delivery of one of the commands, a handler that broke the
// transaction), or if two commands need the same inbox entry, each command
// is run again in a transaction of its own.
func (p *Participant) processBatch(ctx context.Context, cmds []*Command) (errs []error) {
	defer p.count(cmds, &errs)
	errs = make([]error, len(cmds))
	if distinctKeys(cmds) {
		err := p.runBatch(ctx, cmds, false)
		if err == nil || ctx.Err() != nil {
			for i := range errs {
				errs[i] = err
			}
			return errs
		}
		p.log.DebugContext(ctx, "saga: batch failed, running its commands one by one", "commands", len(cmds), "error", err)
	}
	for i, cmd := range cmds {
		errs[i] = p.runBatch(ctx, []*Command{cmd}, true)
	}
	return errs
}

// count counts what each command of a processed batch came to.
func (p *Participant) count(cmds []*Command, errs *[]error) {
	for i, cmd := range cmds {
		name := cmd.Name
		if _, ok := p.handlers[name]; !ok {
			name = unknownCommand
		}
		if (*errs)[i] != nil {
			p.pm.commands.WithLabelValues(name, "failed").Inc()
			continue
		}
		p.pm.commands.WithLabelValues(name, string(outcomeFromWire(cmd.outcome))).Inc()
		if cmd.duplicate {
			p.pm.duplicates.WithLabelValues(name).Inc()
		}
	}
}

// consumerName names the participant's consumer in the router and the
// metrics.
func (p *Participant) consumerName() string { return "saga_commands_" + p.cfg.Name }

// distinctKeys reports whether no two commands need the same inbox entry
// (their own, or for a compensation its action's).
func distinctKeys(cmds []*Command) bool {
	seen := make(map[string]bool, 2*len(cmds))
	for _, cmd := range cmds {
		for _, k := range inboxKeys(cmd) {
			if seen[k] {
				return false
			}
			seen[k] = true
		}
	}
	return true
}

func inboxKeys(cmd *Command) []string {
	if cmd.Compensation {
		return []string{barrierKey(cmd, true), barrierKey(cmd, false)}
	}
	return []string{barrierKey(cmd, false)}
}

func barrierKey(cmd *Command, compensation bool) string {
	phase := "action"
	if compensation {
		phase = "compensation"
	}
	return cmd.SagaID.String() + "/" + strconv.Itoa(cmd.Step) + "/" + phase
}

// selectInboxSQL reads the inbox entries of a batch's keys. It looks each
// key up on its own (LATERAL) rather than with key = ANY($2): the
// statement is prepared, and Postgres may settle on a generic plan while
// the table is still small (a new deployment, a test) and keep it; for
// key = ANY($2) that plan scanned every entry of the consumer, a cost that
// grew with the inbox. A lookup by the primary key is what every generic
// plan of this form uses; the LIMIT (there is at most one row anyway)
// keeps the planner from flattening the subquery back into a join.
const selectInboxSQL = `
SELECT i.key, i.outcome, i.reason, i.payload_type, coalesce(i.payload, '')
FROM unnest($2::text[]) AS k(key)
CROSS JOIN LATERAL (SELECT * FROM sagabox.saga_inbox WHERE consumer = $1 AND key = k.key LIMIT 1) AS i`

// insertInboxSQL stores a batch's new inbox entries in one statement. It is
// a plain INSERT: an entry that exists already was committed by another
// delivery of the same command since the batch read the inbox, and the
// unique violation fails the batch, whose commands are then run one by one
// and find the stored reply. The entries go in key order, so two batches
// with common keys wait on each other instead of deadlocking.
const insertInboxSQL = `
INSERT INTO sagabox.saga_inbox (consumer, key, outcome, reason, payload_type, payload)
SELECT $1, e.key, e.outcome, e.reason, e.payload_type, e.payload
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[]) WITH ORDINALITY
	AS e(key, outcome, reason, payload_type, payload, ord)
ORDER BY e.ord`

// inboxEntries are the new inbox entries of a batch, as insertInboxSQL's
// arrays.
type inboxEntries struct {
	keys, outcomes, reasons, types []string
	payloads                       [][]byte
}

func (e *inboxEntries) add(key string, r *replyEnvelope) {
	e.keys, e.outcomes, e.reasons = append(e.keys, key), append(e.outcomes, r.Outcome), append(e.reasons, r.Reason)
	e.types, e.payloads = append(e.types, r.PayloadType), append(e.payloads, r.Payload)
}

func (e *inboxEntries) Len() int           { return len(e.keys) }
func (e *inboxEntries) Less(i, j int) bool { return e.keys[i] < e.keys[j] }
func (e *inboxEntries) Swap(i, j int) {
	e.keys[i], e.keys[j] = e.keys[j], e.keys[i]
	e.outcomes[i], e.outcomes[j] = e.outcomes[j], e.outcomes[i]
	e.reasons[i], e.reasons[j] = e.reasons[j], e.reasons[i]
	e.types[i], e.types[j] = e.types[j], e.types[i]
	e.payloads[i], e.payloads[j] = e.payloads[j], e.payloads[i]
}

// runBatch runs commands, whose inbox keys are distinct, in one
// transaction: one query reads their inbox entries, the handlers run (each
// in a savepoint sent with its first statement), and one round trip writes
// the new inbox entries and all the replies. eager opens each savepoint
// before its handler (see handlerTx.begin).
func (p *Participant) runBatch(ctx context.Context, cmds []*Command, eager bool) error {
	keys := make([]string, 0, len(cmds))
	for _, cmd := range cmds {
		keys = append(keys, inboxKeys(cmd)...)
	}
	// BEGIN and the inbox read in one round trip; the inbox entries, the
	// replies and COMMIT in another (pipeTx). The relay is woken after the
	// commit, when it can see the replies.
	ctx, committed := p.writer.DeferNotify(ctx)
	first := &pgx.Batch{}
	first.BeginTx(pgx.TxOptions{})
	first.Queue(selectInboxSQL, p.cfg.Name, keys)
	ptx, br, err := beginPipe(ctx, p.pool, func(c *pgx.Conn) error { return prepareStatements(ctx, c) }, first)
	if err != nil {
		return fmt.Errorf("saga: inbox: %w (did you run saga.Migrate?)", err)
	}
	stored, err := readInbox(br)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("saga: inbox: %w", cerr)
	}
	if err != nil {
		ptx.abort(ctx)
		return err
	}
	htx := newHandlerTx(ctx, ptx.tx)
	var entries inboxEntries
	msgs := make([]outbox.Message, 0, len(cmds))
	for _, cmd := range cmds {
		cmd.codec = p.codec
		reply, err := p.decide(withSpan(ctx, cmd.span), htx, cmd, stored, &entries, eager)
		if err != nil {
			ptx.abort(ctx)
			return err
		}
		msgs = append(msgs, p.replyMessage(cmd, reply))
	}
	b := &pgx.Batch{}
	if entries.Len() > 0 {
		sort.Sort(&entries)
		b.Queue(insertInboxSQL, p.cfg.Name, entries.keys, entries.outcomes, entries.reasons, entries.types, entries.payloads)
	}
	if err := p.writer.Queue(ctx, b, msgs...); err != nil {
		ptx.abort(ctx)
		return err
	}
	n := b.Len()
	if err := ptx.commit(ctx, b, htx.send, func(br pgx.BatchResults) error { return readAll(br, n, "inbox and replies") }); err != nil {
		return err
	}
	committed()
	return nil
}

// preparedKey marks, in a connection's CustomData, that prepareStatements
// ran on it.
const preparedKey = "sagabox.saga.participant"

// prepareStatements prepares the participant's own statements once per
// connection, when pgx prepares statements (its default mode). pgx drops a
// statement from its cache whenever a batch with it fails, and must then
// prepare it again before the next batch that has it, which is refused
// while the transaction is aborted: the ROLLBACK TO SAVEPOINT after a
// failed handler would be refused along with everything else. Statements
// prepared by name stay prepared.
func prepareStatements(ctx context.Context, conn *pgx.Conn) error {
	data := conn.PgConn().CustomData()
	if data[preparedKey] != nil {
		return nil
	}
	if conn.Config().DefaultQueryExecMode == pgx.QueryExecModeCacheStatement {
		for _, sql := range []string{savepointSQL, releaseSQL, rollbackToSQL, selectInboxSQL, insertInboxSQL, "commit"} {
			if _, err := conn.Prepare(ctx, sql, sql); err != nil {
				return err
			}
		}
	}
	data[preparedKey] = true
	return nil
}

// readInbox reads the stored replies of the inbox entries a batch needs
// (selectInboxSQL's results), by key.
func readInbox(br pgx.BatchResults) (map[string]*replyEnvelope, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("saga: inbox: %w (did you run saga.Migrate?)", err)
	}
	defer rows.Close()
	stored := map[string]*replyEnvelope{}
	for rows.Next() {
		var key string
		r := &replyEnvelope{}
		if err := rows.Scan(&key, &r.Outcome, &r.Reason, &r.PayloadType, &r.Payload); err != nil {
			return nil, fmt.Errorf("saga: inbox: %w", err)
		}
		stored[key] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("saga: inbox: %w", err)
	}
	return stored, nil
}

// decide returns a command's reply: the stored one, "nothing to
// compensate", or the handler's. It adds the inbox entries to store to e.
func (p *Participant) decide(ctx context.Context, htx *handlerTx, cmd *Command, stored map[string]*replyEnvelope,
	e *inboxEntries, eager bool) (*replyEnvelope, error) {
	key := barrierKey(cmd, cmd.Compensation)
	if r, ok := stored[key]; ok {
		// Seen before: answer what we answered then.
		p.log.DebugContext(ctx, "saga: duplicate command, sending the stored reply", "saga_id", cmd.SagaID, "step", cmd.Step)
		cmd.outcome, cmd.duplicate = r.Outcome, true
		return r, nil
	}
	if cmd.Compensation {
		action := barrierKey(cmd, false)
		r, ok := stored[action]
		if !ok {
			// The action never ran: record it as cancelled, so that it
			// does nothing if it arrives later.
			e.add(action, &replyEnvelope{Outcome: wireRejected, Reason: "cancelled: compensated before it ran"})
		}
		if !ok || r.Outcome != wireSuccess {
			// The action never ran, or was refused: nothing to undo.
			reply := &replyEnvelope{Outcome: wireSuccess, Reason: "nothing to compensate", Payload: []byte{}}
			e.add(key, reply)
			cmd.outcome, cmd.duplicate = reply.Outcome, false
			return reply, nil
		}
	}
	if err := htx.begin(ctx, eager); err != nil {
		return nil, err
	}
	reply, store, err := p.run(ctx, htx, cmd)
	htx.end(err != nil || reply.Outcome != wireSuccess)
	if err != nil {
		return nil, err
	}
	if htx.broken != nil {
		// The handler's outcome cannot be trusted.
		return nil, htx.broken
	}
	if store {
		e.add(key, reply)
	}
	cmd.outcome, cmd.duplicate = reply.Outcome, false
	return reply, nil
}

// run calls the handler in htx. It returns the reply and whether to store
// it: a transient failure is answered ERROR and not stored, so the retry
// runs the handler again.
func (p *Participant) run(ctx context.Context, htx *handlerTx, cmd *Command) (*replyEnvelope, bool, error) {
	h, ok := p.handlers[cmd.Name]
	if !ok {
		return &replyEnvelope{Outcome: wireRejected, Reason: fmt.Sprintf("participant %s has no handler for %q", p.cfg.Name, cmd.Name),
			Payload: []byte{}}, true, nil
	}
	start := time.Now()
	res, herr := h(ctx, htx, cmd)
	p.pm.duration.WithLabelValues(cmd.Name).Observe(time.Since(start).Seconds())
	if herr != nil {
		if errors.Is(herr, ErrRejected) {
			return &replyEnvelope{Outcome: wireRejected, Reason: rejectionReason(herr), Payload: []byte{}}, true, nil
		}
		p.log.WarnContext(ctx, "saga: handler failed, the orchestrator will retry", "saga_id", cmd.SagaID, "command", cmd.Name, "error", herr)
		return &replyEnvelope{Outcome: wireError, Reason: herr.Error()}, false, nil
	}
	r := &replyEnvelope{Outcome: wireSuccess, Payload: []byte{}}
	typ, value := replyPayload(res)
	if value != nil {
		s, b, err := p.codec.Encode(typ, value)
		if err != nil {
			return nil, false, fmt.Errorf("saga: %s reply payload (return a generated type, or a saga.Payload naming its schema): %w", cmd.Name, err)
		}
		r.PayloadType, r.Payload, r.encoded = s.Name, b, true
	}
	return r, true, nil
}

// replyPayload is a handler's reply value and the name of its schema ("" to
// let the codec read it from the value); a nil value is no payload.
func replyPayload(res any) (string, any) {
	switch v := res.(type) {
	case nil:
		return "", nil
	case Payload:
		return v.Type, v.Value
	case *Payload:
		if v == nil {
			return "", nil
		}
		return v.Type, v.Value
	}
	if rv := reflect.ValueOf(res); rv.Kind() == reflect.Pointer && rv.IsNil() {
		return "", nil // a typed nil: no payload
	}
	return "", res
}

func (p *Participant) replyMessage(cmd *Command, r *replyEnvelope) outbox.Message {
	r.SagaID, r.Step, r.Attempt, r.Compensation = cmd.SagaID.String(), cmd.Step, cmd.Attempt, cmd.Compensation
	m := replyRecord(cmd.ReplyTopic, r)
	m.CorrelationID, m.CausationID, m.SpanContext = cmd.CorrelationID, cmd.MessageID, spanContext(cmd.span)
	return m
}

// HandleMessage is the watermill handler for the command topic: it decodes
// the command and processes it. Undecodable commands are dead-lettered; a
// registry or database outage makes it return the error, so the command is
// delivered again. Run does the same, batching the commands of concurrent
// partitions.
func (p *Participant) HandleMessage(msg *message.Message) error {
	return p.handleMessage(msg, p.Process)
}

func (p *Participant) handleMessage(msg *message.Message, process func(context.Context, *Command) error) error {
	ctx := msg.Context()
	cmd, err := p.decodeCommand(msg)
	if err != nil {
		if !undecodable(err) {
			return err
		}
		p.log.WarnContext(ctx, "saga: dead-lettering command", "message_id", msg.UUID, "error", err)
		if err := writeDeadLetter(ctx, p.pool, p.writer, p.cfg.DeadLetterTopic, msg, err); err != nil {
			return err
		}
		p.cm.deadLetters.Inc()
		return nil
	}
	ctx, cmd.span = startProcess(ctx, p.tracer, cmd.trace, p.cfg.CommandTopic, p.cfg.ConsumerGroup, msg, func(span trace.Span) {
		sagaAttrs(span, cmd.SagaID.String(), cmd.SagaType, cmd.Step, cmd.StepName, cmd.Attempt, cmd.Compensation)
		span.SetAttributes(tracing.Command.String(cmd.Name), tracing.Participant.String(p.cfg.Name))
	})
	err = process(ctx, cmd)
	if cmd.span != nil {
		endSpan(cmd.span, err, tracing.Outcome.String(string(outcomeFromWire(cmd.outcome))), tracing.Duplicate.Bool(cmd.duplicate))
	}
	return err
}

func (p *Participant) decodeCommand(msg *message.Message) (*Command, error) {
	if !inEnvelope(msg) {
		r, err := decodeRecord(p.decoder, msg, "command")
		if err != nil {
			return nil, err
		}
		cmd := &Command{SagaID: r.sagaID, SagaType: r.str(HeaderSagaType), Step: r.step, StepName: r.str(HeaderStepName),
			Attempt: r.attempt, Compensation: r.compensation, Name: r.str(HeaderCommand), ReplyTopic: r.str(HeaderReplyTopic),
			PayloadType: r.payloadType, Payload: r.payload, MessageID: msg.UUID,
			CorrelationID: msg.Metadata.Get(outbox.HeaderCorrelationID), framed: r.framed, decoder: p.decoder, trace: recordTrace(msg)}
		if r.err != nil {
			return nil, fmt.Errorf("%w: command: %v", errNotEnvelope, r.err)
		}
		return cmd, nil
	}
	var env commandEnvelope
	id, err := decodeEnvelope(p.decoder, msg.Payload, CommandType, &env)
	if err != nil {
		return nil, err
	}
	return &Command{SagaID: id, SagaType: env.SagaType, Step: env.Step, StepName: env.StepName, Attempt: env.Attempt,
		Compensation: env.Compensation, Name: env.Command, ReplyTopic: env.ReplyTopic, PayloadType: env.PayloadType,
		Payload: env.Payload, MessageID: msg.UUID, CorrelationID: msg.Metadata.Get(outbox.HeaderCorrelationID),
		trace: recordTrace(msg)}, nil
}

// Run consumes CommandTopic until ctx is done, then lets the commands in
// flight finish and returns nil. It needs the Runtime's Brokers and
// Registry, and CommandTopic. A participant runs once: a second Run
// returns an error.
func (p *Participant) Run(ctx context.Context) error {
	if len(p.brokers) == 0 || p.decoder == nil || p.cfg.CommandTopic == "" {
		return fmt.Errorf("%w: Participant.Run needs the Runtime's Brokers and Registry, and ParticipantConfig.CommandTopic", ErrInvalidConfig)
	}
	if err := p.once.start("saga.Participant " + p.cfg.Name); err != nil {
		return err
	}
	stop := p.batch.start(ctx, batchWorkers)
	defer stop() // after the router: its handlers wait on the batcher
	if !p.cfg.DisableCleanup {
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() { runCleaner(ctx, p.pool, p.cfg.Retention, p.cfg.CleanupInterval, p.log) })
	}
	return runRouter(ctx, consumeConfig{Brokers: p.brokers, ConsumerGroup: p.cfg.ConsumerGroup, Topic: p.cfg.CommandTopic,
		Sarama: p.cfg.OverwriteSaramaConfig, NackResendSleep: p.cfg.NackResendSleep, Logger: p.log,
		Name: p.consumerName(), Metrics: p.cm}, func(msg *message.Message) error { return p.handleMessage(msg, p.batch.do) })
}
