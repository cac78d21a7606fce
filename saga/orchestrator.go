package saga

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/tracing"
	"github.com/sagabox/sagabox/outbox"
)

// Defaults of Config.
const (
	DefaultPollInterval    = 500 * time.Millisecond
	DefaultPollWorkers     = 2
	DefaultRetention       = 7 * 24 * time.Hour
	DefaultCleanupInterval = time.Minute
	DefaultCleanupBatch    = 1000
	DefaultNackResendSleep = 100 * time.Millisecond
	DefaultReplyBatch      = 64
)

// Config configures an Orchestrator. The database, the outbox writer, the
// codec, Kafka, the logger and the metrics come from the Runtime given to
// NewOrchestrator (a sagabox.Client).
type Config struct {
	// ReplyTopic is where participants send their replies. Required.
	ReplyTopic string
	// ConsumerGroup defaults to "sagabox-saga-" + the definitions' name.
	ConsumerGroup string
	// DeadLetterTopic receives replies that cannot be decoded (not Avro,
	// unknown schema ID, not a reply) with the reason, so that they do not
	// block their partition. Defaults to ReplyTopic + ".dlq".
	DeadLetterTopic string
	// OverwriteSaramaConfig replaces SaramaConfig().
	OverwriteSaramaConfig *sarama.Config
	// NackResendSleep is the wait before a reply that failed for a
	// transient reason (database or registry down) is handled again.
	// Defaults to DefaultNackResendSleep.
	NackResendSleep time.Duration

	// ReplyBatch is the most replies handled in one transaction. Replies
	// arriving on different partitions at the same moment share a
	// transaction (and its commit); a lone reply is handled at once. 1
	// handles each reply in its own transaction. Defaults to
	// DefaultReplyBatch.
	ReplyBatch int

	// PollInterval is how often Run looks for expired deadlines, due
	// retries and operator requests. Defaults to DefaultPollInterval.
	PollInterval time.Duration
	// PollWorkers is how many due sagas Run handles at once. Defaults to
	// DefaultPollWorkers.
	PollWorkers int
	// Retention is how long finished (succeeded or compensated) sagas and
	// inbox entries are kept; failed sagas are kept until an operator acts.
	// Defaults to DefaultRetention.
	Retention time.Duration
	// DisableCleanup keeps everything: Run deletes nothing.
	DisableCleanup bool
	// CleanupInterval defaults to DefaultCleanupInterval.
	CleanupInterval time.Duration

	// TracerProvider makes the "process" span of each reply whose record
	// carries a trace context (a child of it: the commands it leads to
	// carry its context), and a span per timer that fires (deadline,
	// retry, operator request), a child of the trace context stored with
	// the saga when it started. Defaults to the Runtime's
	// (TracerProviderRuntime), else the global provider.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns a copy of c with every unset field defaulted, but
// for ConsumerGroup, whose default names the definition: NewOrchestrator
// fills it in.
func (c Config) WithDefaults() Config {
	if c.DeadLetterTopic == "" && c.ReplyTopic != "" {
		c.DeadLetterTopic = c.ReplyTopic + ".dlq"
	}
	if c.NackResendSleep == 0 {
		c.NackResendSleep = DefaultNackResendSleep
	}
	if c.ReplyBatch == 0 {
		c.ReplyBatch = DefaultReplyBatch
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.PollWorkers == 0 {
		c.PollWorkers = DefaultPollWorkers
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.ReplyTopic == "":
		return fmt.Errorf("%w: Config.ReplyTopic is required", ErrInvalidConfig)
	case c.NackResendSleep < 0:
		return fmt.Errorf("%w: Config.NackResendSleep is negative", ErrInvalidConfig)
	case c.ReplyBatch < 0:
		return fmt.Errorf("%w: Config.ReplyBatch is negative", ErrInvalidConfig)
	case c.PollInterval < 0:
		return fmt.Errorf("%w: Config.PollInterval is negative", ErrInvalidConfig)
	case c.PollWorkers < 0:
		return fmt.Errorf("%w: Config.PollWorkers is negative", ErrInvalidConfig)
	case c.Retention < 0:
		return fmt.Errorf("%w: Config.Retention is negative: set DisableCleanup to keep everything", ErrInvalidConfig)
	case c.CleanupInterval < 0:
		return fmt.Errorf("%w: Config.CleanupInterval is negative", ErrInvalidConfig)
	}
	return nil
}

// Orchestrator runs the sagas of one saga type: Start begins one inside
// the caller's transaction, Run consumes the replies and fires the
// timeouts, retries and operator requests. Several orchestrators of the
// same type may run at once, in one process or many.
//
// An orchestrator may drive several versions of its definition at once:
// each saga runs on the steps of the version it started with, new sagas
// start on the newest. Deploy a new version next to the old one, and drop
// the old one once Admin.List shows none of its sagas unfinished.
type Orchestrator[D any] struct {
	def      *Definition[D] // the newest version: Start and Queue use it
	versions []int          // registered versions, ascending
	machines map[int]*machine[D]
	cfg      Config
	pool     *pgxpool.Pool
	writer   *outbox.Writer
	codec    *outbox.Codec
	brokers  []string
	log      *slog.Logger
	metrics  *metrics
	decoder  *outbox.Decoder
	batch    *batcher[replyItem]
	once     runOnce
	tracer   trace.Tracer
	cm       *consumerMetrics
}

type replyItem struct {
	r         *Reply
	causation string
	span      trace.Span // the reply's process span; nil when not traced
}

// NewOrchestrator checks cfg and the definitions, and attaches the
// orchestrator to rt, whose Run runs it (without brokers it is built but
// not attached: Start still works, its commands wait in the outbox). It
// does not touch the network.
//
// defs are the versions of one saga type (same Name, distinct Version, all
// of them registered at once): the newest starts new sagas, and every saga
// runs on the version it started with. A saga whose version is not among
// defs is never run on another version's steps: its replies are not
// applied here (the error log and the metric
// sagabox_saga_unknown_version_total say so, and its last_error names the
// versions registered), and its timers are left to an orchestrator that
// has its version. Its step's deadline is kept, so once such an
// orchestrator runs, the timeout re-sends the command and the participant's
// inbox answers with the reply it stored: nothing is lost.
func NewOrchestrator[D any](rt Runtime, cfg Config, defs ...*Definition[D]) (*Orchestrator[D], error) {
	if rt == nil {
		return nil, fmt.Errorf("%w: NewOrchestrator needs a Runtime (a sagabox.Client)", ErrInvalidConfig)
	}
	if len(defs) == 0 {
		return nil, fmt.Errorf("%w: NewOrchestrator needs at least one definition", ErrInvalidConfig)
	}
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if rt.Pool() == nil || rt.Writer() == nil {
		return nil, fmt.Errorf("%w: the Runtime has no Pool or Writer", ErrInvalidConfig)
	}
	codec := rt.Codec()
	if err := checkCodec(codec, "the Runtime's Codec"); err != nil {
		return nil, err
	}
	o := &Orchestrator[D]{cfg: cfg, machines: map[int]*machine[D]{}, pool: rt.Pool(), writer: rt.Writer(),
		codec: codec, brokers: rt.Brokers(), tracer: tracerOf(cfg.TracerProvider, rt)}
	for i, def := range defs {
		switch {
		case def == nil:
			return nil, fmt.Errorf("%w: definition %d is nil", ErrInvalidConfig, i)
		case def.name != defs[0].name:
			return nil, fmt.Errorf("%w: the definitions are of two saga types, %q and %q: one orchestrator per type", ErrInvalidConfig, defs[0].name, def.name)
		case o.machines[def.version] != nil:
			return nil, fmt.Errorf("%w: saga %s version %d is given twice", ErrInvalidConfig, def.name, def.version)
		}
		for _, st := range def.steps {
			for _, inv := range []*Invocation[D]{st.Invoke, st.Compensate} {
				if inv != nil && inv.Type != "" {
					if _, ok := codec.Schema(inv.Type); !ok {
						return nil, fmt.Errorf("%w: %s version %d, step %q: the codec does not know payload type %s", ErrInvalidConfig,
							def.name, def.version, st.Name, inv.Type)
					}
				}
			}
		}
		o.machines[def.version] = &machine[D]{def: def, replyTopic: cfg.ReplyTopic, encode: func(typ string, v any) ([]byte, error) {
			return encodePayload(codec, typ, v)
		}}
		o.versions = append(o.versions, def.version)
		if o.def == nil || def.version > o.def.version {
			o.def = def
		}
	}
	slices.Sort(o.versions)
	if o.cfg.ConsumerGroup == "" {
		o.cfg.ConsumerGroup = "sagabox-saga-" + o.def.name
	}
	met, err := newMetrics(rt.Registerer(), o.def.name)
	if err != nil {
		return nil, fmt.Errorf("saga: register metrics: %w", err)
	}
	o.metrics = met
	if o.cm, err = newConsumerMetrics(rt.Registerer(), "saga_replies_"+o.def.name); err != nil {
		return nil, err
	}
	o.log = rt.Logger().With("component", "saga.orchestrator", "saga_type", o.def.name)
	if reg := rt.Registry(); reg != nil {
		o.decoder = outbox.NewDecoder(reg, codec)
	}
	o.batch = newBatcher(batchWorkers, cfg.ReplyBatch, o.handleReplies)
	if len(o.brokers) > 0 {
		if err := rt.Attach("saga.orchestrator."+o.def.name, o.Run); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// machineFor is the machine of s's definition version, or an error
// wrapping ErrUnknownVersion.
func (o *Orchestrator[D]) machineFor(s *state) (*machine[D], error) {
	if m := o.machines[s.DefVersion]; m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("%w: saga %s (%s) started on version %d; this orchestrator has versions %v: run one that has it",
		ErrUnknownVersion, s.ID, s.Type, s.DefVersion, o.versions)
}

// Definition returns the newest of the orchestrator's definitions, the one
// Start and Queue use.
func (o *Orchestrator[D]) Definition() *Definition[D] { return o.def }

// StartOptions are optional settings of one saga.
type StartOptions struct {
	// ID defaults to a new UUIDv7. Give one to make Start idempotent: a
	// second Start with the same ID fails on the primary key.
	ID uuid.UUID
	// CorrelationID is set on every command of the saga. Defaults to the
	// saga ID.
	CorrelationID string
}

// Start begins a saga inside tx, the caller's transaction: the saga's row,
// its local first steps and its first command commit with the caller's
// business change, or not at all. It returns the saga ID.
func (o *Orchestrator[D]) Start(ctx context.Context, tx pgx.Tx, data D, opts ...StartOptions) (uuid.UUID, error) {
	s, err := o.newState(opts)
	if err != nil {
		return uuid.Nil, err
	}
	e := &txEnv[D]{tx: tx}
	if err := o.machines[o.def.version].advance(ctx, e, s, &data); err != nil {
		return uuid.Nil, err
	}
	if err := e.flush(ctx, o.writer, s, &data, true, ""); err != nil {
		return uuid.Nil, err
	}
	o.metrics.started.Inc()
	o.metrics.record(e.finishes, e.hist)
	return s.ID, nil
}

// Queue is Start for a caller that sends its transaction's statements as
// one pgx.Batch, as outbox.Writer.Queue is for Write: it adds the saga's
// row and its first command to b, and they run when the caller sends it.
// With BEGIN in the batch too, a business change and the start of its saga
// take two round trips instead of three:
//
//	b := &pgx.Batch{}
//	b.BeginTx(pgx.TxOptions{})
//	b.Queue(`INSERT INTO orders ...`, ...)
//	id, err := orch.Queue(ctx, b, data)
//	...
//	br := pool.SendBatch(ctx, b)
//	tx := br.Tx()
//	defer tx.Rollback(ctx)
//	if err := br.Close(); err != nil { ... }
//	err = tx.Commit(ctx)
//
// A local step needs the transaction to run in, so a definition whose
// first step is local cannot be queued: use Start.
func (o *Orchestrator[D]) Queue(ctx context.Context, b *pgx.Batch, data D, opts ...StartOptions) (uuid.UUID, error) {
	if st := o.def.steps[0]; st.Local != nil {
		return uuid.Nil, fmt.Errorf("%w: saga %s starts with the local step %q, which needs a transaction: use Start", ErrInvalidConfig, o.def.name, st.Name)
	}
	s, err := o.newState(opts)
	if err != nil {
		return uuid.Nil, err
	}
	e := &txEnv[D]{}
	if err := o.machines[o.def.version].advance(ctx, e, s, &data); err != nil {
		return uuid.Nil, err
	}
	if err := e.queue(ctx, b, o.writer, s, &data, true, ""); err != nil {
		return uuid.Nil, err
	}
	o.metrics.started.Inc()
	o.metrics.record(e.finishes, e.hist)
	return s.ID, nil
}

// newState is a new saga's state, before its first step.
func (o *Orchestrator[D]) newState(opts []StartOptions) (*state, error) {
	var opt StartOptions
	if len(opts) > 0 {
		opt = opts[0]
	}
	id := opt.ID
	if id == uuid.Nil {
		var err error
		if id, err = uuid.NewV7(); err != nil {
			return nil, err
		}
	}
	if opt.CorrelationID == "" {
		opt.CorrelationID = id.String()
	}
	return &state{ID: id, Type: o.def.name, DefVersion: o.def.version, Status: StatusRunning, Attempt: 1,
		CorrelationID: opt.CorrelationID}, nil
}

// inSaga runs fn on one saga in a transaction of its own: load locks the
// saga's row, fn runs its version's machine, and what fn changed (the row,
// the history, the commands) is written before the commit. fn returns
// false when it changed nothing. A saga of a version this orchestrator
// does not have is reported and left alone (ErrUnknownVersion). This is
// the one path of a reply handled alone, a timer, an operator request and
// a typed Retry or Abort.
func (o *Orchestrator[D]) inSaga(ctx context.Context, load func(pgx.Tx) (*state, []byte, error), causation string,
	fn func(e *txEnv[D], m *machine[D], s *state, data *D) (bool, error)) (bool, error) {
	var e *txEnv[D]
	changed := false
	var unknown *state
	ctx, committed := o.writer.DeferNotify(ctx) // wake the relay after the commit, not before
	err := pgx.BeginFunc(ctx, o.pool, func(tx pgx.Tx) error {
		s, raw, err := load(tx)
		if err != nil || s == nil {
			return err
		}
		m, err := o.machineFor(s)
		if err != nil {
			unknown = s
			return err
		}
		data := new(D)
		if err := json.Unmarshal(raw, data); err != nil {
			return fmt.Errorf("saga %s: data: %w", s.ID, err)
		}
		e = &txEnv[D]{tx: tx, writer: o.writer}
		if changed, err = fn(e, m, s, data); err != nil || !changed {
			return err
		}
		return e.flush(ctx, o.writer, s, data, false, causation)
	})
	if unknown != nil {
		o.reportUnknownVersion(ctx, unknown)
	}
	if err != nil {
		return false, err
	}
	committed()
	if e != nil {
		o.recordLate(ctx, e.lates)
	}
	if !changed {
		return false, nil
	}
	o.metrics.record(e.finishes, e.hist)
	if e.asked > 0 {
		o.metrics.askedAgain.Add(float64(e.asked))
	}
	return true, nil
}

// reportUnknownVersion says that s is of a version this orchestrator does
// not have: in the log, the metric and the saga's last_error (outside the
// transaction that found it, which rolled back), where operators look.
func (o *Orchestrator[D]) reportUnknownVersion(ctx context.Context, s *state) {
	_, err := o.machineFor(s)
	// Counted once the error is recorded, so whoever sees the count can
	// also read it in the saga's row.
	defer o.metrics.unknownVersion.Inc()
	o.log.ErrorContext(ctx, "saga: definition version not registered: not running the saga", "saga_id", s.ID,
		"version", s.DefVersion, "registered", o.versions)
	if _, uerr := o.pool.Exec(context.WithoutCancel(ctx), `UPDATE sagabox.sagas SET last_error = $2 WHERE id = $1 AND finished_at IS NULL`,
		[16]byte(s.ID), err.Error()); uerr != nil {
		o.log.ErrorContext(ctx, "saga: record unknown version", "saga_id", s.ID, "error", uerr)
	}
}

// handleReply applies one reply in its own transaction: lock the saga, check
// that the reply is the one awaited, apply it, write the next command and
// the new state. It returns whether the reply was used.
func (o *Orchestrator[D]) handleReply(ctx context.Context, r *Reply, causation string) (bool, error) {
	r.codec = o.codec
	used, err := o.inSaga(ctx, func(tx pgx.Tx) (*state, []byte, error) {
		s, raw, err := loadForUpdate(ctx, tx, o.def.name, r.SagaID)
		if errors.Is(err, ErrNotFound) {
			return nil, nil, nil // cleaned up, or another definition's saga
		}
		return s, raw, err
	}, causation, func(e *txEnv[D], m *machine[D], s *state, data *D) (bool, error) {
		return m.onReply(ctx, e, s, data, r)
	})
	if errors.Is(err, ErrUnknownVersion) {
		// Not applied here, and not retried: the step's deadline stays, so
		// an orchestrator with the version re-asks, and the participant's
		// inbox answers again.
		err = nil
	}
	if err != nil {
		return false, err
	}
	if !used {
		o.metrics.ignored.Inc()
		o.log.DebugContext(ctx, "saga: ignored reply", "saga_id", r.SagaID, "step", r.Step, "attempt", r.Attempt)
	}
	return used, nil
}

// recordLate counts and logs the late replies a committed transaction
// recorded.
func (o *Orchestrator[D]) recordLate(ctx context.Context, lates []lateNote) {
	for _, l := range lates {
		o.metrics.late.WithLabelValues(string(l.Disposition)).Inc()
		level := slog.LevelInfo
		if l.Disposition == LateRecorded && !l.Compensation && l.Outcome == OutcomeSucceeded {
			level = slog.LevelError // an effect may be left behind: an operator must look
		}
		o.log.Log(ctx, level, "saga: late reply", "saga_id", l.sagaID, "step", l.Name, "compensation", l.Compensation,
			"attempt", l.Attempt, "outcome", l.Outcome, "disposition", l.Disposition, "note", l.Note)
	}
}

// handleReplies applies a batch of replies in one transaction, locking
// their sagas in id order: BEGIN travels with the load, COMMIT with the
// writes (pipeTx). If the transaction fails, each reply of a batch of
// several is retried in its own, so that one bad reply cannot fail the
// others.
func (o *Orchestrator[D]) handleReplies(ctx context.Context, items []replyItem) []error {
	errs := make([]error, len(items))
	envs, ignored, err := o.applyReplies(ctx, items)
	if err != nil {
		if len(items) == 1 && !errors.Is(err, ErrUnknownVersion) {
			errs[0] = err
			return errs
		}
		if ctx.Err() == nil {
			o.log.WarnContext(ctx, "saga: reply batch failed, handling its replies one by one", "replies", len(items), "error", err)
		}
		for i, it := range items {
			_, errs[i] = o.handleReply(withSpan(ctx, it.span), it.r, it.causation)
		}
		return errs
	}
	for range ignored {
		o.metrics.ignored.Inc()
	}
	for _, e := range envs {
		o.metrics.record(e.finishes, e.hist)
		if len(e.lates) > 0 {
			o.recordLate(ctx, e.lates)
		}
	}
	return errs
}

func (o *Orchestrator[D]) applyReplies(ctx context.Context, items []replyItem) (map[uuid.UUID]*txEnv[D], int, error) {
	ids := make([]uuid.UUID, 0, len(items))
	for _, it := range items {
		ids = append(ids, it.r.SagaID)
	}
	ctx, committed := o.writer.DeferNotify(ctx) // wake the relay after the commit, not before
	first := &pgx.Batch{}
	first.BeginTx(pgx.TxOptions{})
	first.Queue(loadManySQL, sortedKeys(ids), o.def.name)
	ptx, br, err := beginPipe(ctx, o.pool, nil, first)
	if err != nil {
		return nil, 0, fmt.Errorf("saga: load: %w", err)
	}
	rows, err := br.Query()
	var states map[uuid.UUID]*state
	var raws map[uuid.UUID][]byte
	if err == nil {
		states, raws, err = scanStates(rows)
	}
	if cerr := br.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("saga: load: %w", cerr)
	}
	if err != nil {
		ptx.abort(ctx)
		return nil, 0, err
	}
	envs, ignored, saved, err := o.runReplies(ctx, ptx.tx, items, states, raws)
	if err != nil {
		ptx.abort(ctx)
		return nil, 0, err
	}
	b, read := &pgx.Batch{}, func(pgx.BatchResults) error { return nil }
	if len(saved) > 0 {
		if b, read, err = queueMany(ctx, o.writer, saved); err != nil {
			ptx.abort(ctx)
			return nil, 0, err
		}
	}
	if err := ptx.commit(ctx, b, ptx.tx.SendBatch, read); err != nil {
		return nil, 0, err
	}
	committed()
	for _, sv := range saved {
		sv.state.Version++
	}
	return envs, ignored, nil
}

// runReplies runs the machine on each reply (in tx, for local steps) and
// returns the sagas to save, in id order.
func (o *Orchestrator[D]) runReplies(ctx context.Context, tx pgx.Tx, items []replyItem, states map[uuid.UUID]*state,
	raws map[uuid.UUID][]byte) (map[uuid.UUID]*txEnv[D], int, []savedSaga[D], error) {
	envs := map[uuid.UUID]*txEnv[D]{}
	datas := map[uuid.UUID]*D{}
	causes := map[uuid.UUID]string{}
	var touched []uuid.UUID
	ignored := 0
	for _, it := range items {
		id := it.r.SagaID
		s := states[id]
		if s == nil {
			ignored++ // cleaned up, or another definition's saga
			continue
		}
		if o.machines[s.DefVersion] == nil {
			// Fails the batch: its replies are then handled one by one,
			// where this one is reported and left alone (handleReply).
			_, err := o.machineFor(s)
			return nil, 0, nil, err
		}
		if datas[id] == nil {
			datas[id] = new(D)
			if err := json.Unmarshal(raws[id], datas[id]); err != nil {
				return nil, 0, nil, fmt.Errorf("saga %s: data: %w", id, err)
			}
			envs[id] = &txEnv[D]{tx: tx, writer: o.writer}
		}
		it.r.codec = o.codec
		used, err := o.machines[s.DefVersion].onReply(withSpan(ctx, it.span), envs[id], s, datas[id], it.r)
		if err != nil {
			return nil, 0, nil, err
		}
		if !used {
			ignored++
			continue
		}
		if causes[id] == "" {
			touched = append(touched, id)
		}
		causes[id] = it.causation
	}
	slices.SortFunc(touched, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })
	saved := make([]savedSaga[D], len(touched))
	for i, id := range touched {
		saved[i] = savedSaga[D]{env: envs[id], state: states[id], data: datas[id], causation: causes[id]}
	}
	return envs, ignored, saved, nil
}

// handleMessage is the watermill handler for the reply topic.
func (o *Orchestrator[D]) handleMessage(msg *message.Message) error {
	ctx := msg.Context()
	r, err := o.decodeReply(msg)
	if err != nil {
		if !undecodable(err) {
			o.log.WarnContext(ctx, "saga: reply not decoded yet, will retry", "message_id", msg.UUID, "error", err)
			return err
		}
		o.log.WarnContext(ctx, "saga: dead-lettering reply", "message_id", msg.UUID, "topic", o.cfg.DeadLetterTopic, "error", err)
		if err := writeDeadLetter(ctx, o.pool, o.writer, o.cfg.DeadLetterTopic, msg, err); err != nil {
			return err
		}
		o.cm.deadLetters.Inc()
		return nil
	}
	ctx, span := startProcess(ctx, o.tracer, r.trace, o.cfg.ReplyTopic, o.cfg.ConsumerGroup, msg, func(span trace.Span) {
		sagaAttrs(span, r.SagaID.String(), o.def.name, r.Step, "", r.Attempt, r.Compensation)
		span.SetAttributes(tracing.Outcome.String(string(r.Outcome)))
	})
	if o.batch != nil {
		err = o.batch.do(ctx, replyItem{r: r, causation: msg.UUID, span: span})
	} else {
		_, err = o.handleReply(ctx, r, msg.UUID)
	}
	endSpan(span, err)
	if err != nil && ctx.Err() == nil {
		o.log.ErrorContext(ctx, "saga: handle reply", "saga_id", r.SagaID, "error", err)
	}
	return err
}

func (o *Orchestrator[D]) decodeReply(msg *message.Message) (*Reply, error) {
	if !inEnvelope(msg) {
		r, err := decodeRecord(o.decoder, msg, "reply")
		if err != nil {
			return nil, err
		}
		outcome := r.str(HeaderOutcome)
		if r.err != nil {
			return nil, fmt.Errorf("%w: reply: %v", errNotEnvelope, r.err)
		}
		return &Reply{SagaID: r.sagaID, Step: r.step, Attempt: r.attempt, Compensation: r.compensation,
			Outcome: outcomeFromWire(outcome), Reason: msg.Metadata.Get(HeaderReason), PayloadType: r.payloadType,
			Payload: r.payload, framed: r.framed, decoder: o.decoder, trace: recordTrace(msg)}, nil
	}
	var env replyEnvelope
	id, err := decodeEnvelope(o.decoder, msg.Payload, ReplyType, &env)
	if err != nil {
		return nil, err
	}
	return &Reply{SagaID: id, Step: env.Step, Attempt: env.Attempt, Compensation: env.Compensation,
		Outcome: outcomeFromWire(env.Outcome), Reason: env.Reason, PayloadType: env.PayloadType, Payload: env.Payload,
		trace: recordTrace(msg)}, nil
}

// Run consumes replies and fires deadlines, retries and operator requests
// until ctx is done. Then it stops consuming, lets the reply and the timers
// in flight finish, and returns nil. It needs the Runtime's brokers and
// registry, and can be called once (the Runtime's Run calls it).
func (o *Orchestrator[D]) Run(ctx context.Context) error {
	if err := o.once.start("saga.Orchestrator " + o.def.name); err != nil {
		return err
	}
	if len(o.brokers) == 0 || o.decoder == nil {
		return fmt.Errorf("%w: Orchestrator.Run needs the Runtime's brokers and registry", ErrInvalidConfig)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	stopBatch := o.batch.start(ctx, batchWorkers)
	wg.Go(func() {
		defer stopBatch() // after the router: its handlers wait on the batcher
		err := runRouter(ctx, consumeConfig{Brokers: o.brokers, ConsumerGroup: o.cfg.ConsumerGroup,
			Topic: o.cfg.ReplyTopic, Sarama: o.cfg.OverwriteSaramaConfig, NackResendSleep: o.cfg.NackResendSleep,
			Logger: o.log, Name: "saga_replies_" + o.def.name, Metrics: o.cm}, o.handleMessage)
		if err != nil {
			errs <- err
		}
	})
	wg.Go(func() { o.RunTimers(ctx) })
	if !o.cfg.DisableCleanup {
		wg.Go(func() { runCleaner(ctx, o.pool, o.cfg.Retention, o.cfg.CleanupInterval, o.log) })
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// RunTimers is the part of Run that fires expired deadlines and due
// retries, for an instance that does not consume replies. It returns when
// ctx is done.
func (o *Orchestrator[D]) RunTimers(ctx context.Context) {
	// Once per start, for operator tools that lack the Go type (the
	// console's diagram, Admin.Abort's pivot check): never on a saga's path.
	defs := make([]DefinitionInfo, 0, len(o.machines))
	for _, m := range o.machines {
		defs = append(defs, m.def.Describe())
	}
	if err := recordDefinitions(ctx, o.pool, defs...); err != nil && ctx.Err() == nil {
		o.log.WarnContext(ctx, "saga: record definitions", "saga_type", o.def.name, "error", err)
	}
	t := time.NewTicker(o.cfg.PollInterval)
	defer t.Stop()
	lastCount := time.Time{}
	for {
		var wg sync.WaitGroup
		for range o.cfg.PollWorkers {
			wg.Go(func() {
				for ctx.Err() == nil {
					did, err := o.fireOne(context.WithoutCancel(ctx))
					if err != nil {
						o.log.ErrorContext(ctx, "saga: timers", "error", err)
						return
					}
					if !did {
						return
					}
				}
			})
		}
		wg.Wait()
		if time.Since(lastCount) > 5*time.Second {
			lastCount = time.Now()
			var n int64
			if err := o.pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.sagas WHERE saga_type = $1 AND finished_at IS NULL AND status <> 'failed'`, o.def.name).Scan(&n); err == nil {
				o.metrics.inFlight.Set(float64(n))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fireOne handles one saga of a registered version whose deadline
// expired, whose retry is due, or that has an operator's request.
//
// A saga started under a trace gets a "saga timer" span, a child of the
// trace context stored with it, however long ago it started: the commands
// the timer sends carry it, so a retry an hour later still joins the
// saga's trace.
func (o *Orchestrator[D]) fireOne(ctx context.Context) (bool, error) {
	var (
		req  []byte
		due  dueTimer
		span trace.Span
	)
	did, err := o.inSaga(ctx, func(tx pgx.Tx) (s *state, raw []byte, err error) {
		s, raw, req, due, err = loadDue(ctx, tx, o.def.name, o.versions, time.Now())
		return s, raw, err
	}, "", func(e *txEnv[D], m *machine[D], s *state, data *D) (bool, error) {
		kind := due.kind
		if req != nil {
			kind = "operator"
		}
		var sctx context.Context
		sctx, span = o.startTimer(ctx, due.trace, kind, s)
		if req != nil { // an operator's request (admin.go) comes before the timers
			return true, o.carryOut(sctx, e, m, s, data, req)
		}
		return m.onDue(sctx, e, s, data)
	})
	endSpan(span, err)
	return did, err
}

// startTimer starts the span of a timer firing on a saga that carries a
// trace context; nil (and ctx) otherwise.
func (o *Orchestrator[D]) startTimer(ctx context.Context, parent trace.SpanContext, kind string, s *state) (context.Context, trace.Span) {
	if !parent.IsValid() {
		return ctx, nil
	}
	ctx, span := o.tracer.Start(tracing.ContextWith(ctx, parent), "saga timer "+o.def.name)
	if span.IsRecording() {
		sagaAttrs(span, s.ID.String(), s.Type, s.Step, s.StepName, s.Attempt, s.Compensation)
		span.SetAttributes(tracing.Timer.String(kind))
	}
	return ctx, span
}

// runCleaner calls Admin.Cleanup every interval until ctx is done.
func runCleaner(ctx context.Context, db Querier, retention, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := cleanup(ctx, db, retention); err != nil && ctx.Err() == nil {
			log.ErrorContext(ctx, "saga: cleanup", "error", err)
		}
	}
}

// Retry restarts a failed saga where it failed (the compensation, or the
// step past the pivot) with fresh attempts, at once (Admin.Retry is the
// untyped form). It is recorded in the saga's Actions.
func (o *Orchestrator[D]) Retry(ctx context.Context, id uuid.UUID) error {
	return o.operate(ctx, id, Action{Action: ActionRetry}, func(e *txEnv[D], m *machine[D], s *state, data *D) error {
		return m.retry(ctx, e, s, data)
	})
}

// Abort stops a running saga that has not passed its pivot and compensates
// what it did, including the step in flight, at once (Admin.Abort is the
// untyped form). It is recorded in the saga's Actions.
func (o *Orchestrator[D]) Abort(ctx context.Context, id uuid.UUID, reason string) error {
	return o.operate(ctx, id, Action{Action: ActionAbort, Reason: reason}, func(e *txEnv[D], m *machine[D], s *state, data *D) error {
		return m.abort(ctx, e, s, data, reason)
	})
}

func (o *Orchestrator[D]) operate(ctx context.Context, id uuid.UUID, act Action, fn func(*txEnv[D], *machine[D], *state, *D) error) error {
	_, err := o.inSaga(ctx, func(tx pgx.Tx) (*state, []byte, error) {
		return loadForUpdate(ctx, tx, o.def.name, id)
	}, "", func(e *txEnv[D], m *machine[D], s *state, data *D) (bool, error) {
		if err := fn(e, m, s, data); err != nil {
			return false, err
		}
		act.Result, act.At = ResultDone, e.now().UTC()
		return true, logAction(ctx, e.tx, s.ID, act, false)
	})
	return err
}
