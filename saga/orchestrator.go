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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"
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

// Config configures an Orchestrator.
type Config struct {
	// Pool is the orchestrator's database, holding the saga and outbox
	// tables (saga.Migrate, outbox.Migrate). Required.
	Pool *pgxpool.Pool
	// Writer writes the commands into the outbox. Required.
	Writer *outbox.Writer
	// Codec encodes command payloads and decodes reply payloads. It must
	// know saga.Schemas() and every payload type. Required.
	Codec *outbox.Codec
	// ReplyTopic is where participants send their replies. Required.
	ReplyTopic string

	// Brokers, to consume ReplyTopic. Required by Run.
	Brokers []string
	// Registry resolves the schema IDs of replies. Required by Run.
	Registry srclient.ISchemaRegistryClient
	// ConsumerGroup defaults to "sagabox-saga-" + the definition's name
	// (set by NewOrchestrator).
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

	// PollInterval is how often Run looks for expired deadlines and due
	// retries. Defaults to DefaultPollInterval.
	PollInterval time.Duration
	// PollWorkers is how many due sagas Run handles at once. Defaults to
	// DefaultPollWorkers.
	PollWorkers int
	// Retention is how long finished (succeeded or compensated) sagas and
	// inbox entries are kept; failed sagas are kept until an operator acts.
	// Negative disables the cleanup. Defaults to DefaultRetention.
	Retention time.Duration
	// CleanupInterval defaults to DefaultCleanupInterval.
	CleanupInterval time.Duration

	// Logger defaults to a logger that discards everything.
	Logger *slog.Logger
	// Registerer, when set, gets the Prometheus metrics. Several
	// orchestrators may share one.
	Registerer prometheus.Registerer
}

// WithDefaults returns a copy of c with the defaults filled in, but for
// ConsumerGroup, whose default names the definition: NewOrchestrator fills
// it in.
func (c Config) WithDefaults() Config {
	if c.DeadLetterTopic == "" && c.ReplyTopic != "" {
		c.DeadLetterTopic = c.ReplyTopic + ".dlq"
	}
	if c.NackResendSleep <= 0 {
		c.NackResendSleep = DefaultNackResendSleep
	}
	if c.ReplyBatch <= 0 {
		c.ReplyBatch = DefaultReplyBatch
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.PollWorkers <= 0 {
		c.PollWorkers = DefaultPollWorkers
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.CleanupInterval <= 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Pool == nil:
		return fmt.Errorf("%w: Config.Pool is required", ErrInvalidConfig)
	case c.Writer == nil:
		return fmt.Errorf("%w: Config.Writer is required", ErrInvalidConfig)
	case c.ReplyTopic == "":
		return fmt.Errorf("%w: Config.ReplyTopic is required", ErrInvalidConfig)
	}
	return checkCodec(c.Codec, "Config.Codec")
}

// Orchestrator runs the sagas of one definition: Start begins one inside the
// caller's transaction, Run consumes the replies and fires the timeouts and
// retries. Several orchestrators of the same definition may run at once, in
// one process or many.
type Orchestrator[D any] struct {
	def     *Definition[D]
	cfg     Config
	log     *slog.Logger
	m       *machine[D]
	metrics *metrics
	decoder *outbox.Decoder
	batch   *batcher[replyItem]
}

type replyItem struct {
	r         *Reply
	causation string
}

// NewOrchestrator checks the configuration. It does not touch the network.
func NewOrchestrator[D any](def *Definition[D], cfg Config) (*Orchestrator[D], error) {
	if def == nil {
		return nil, fmt.Errorf("%w: nil definition", ErrInvalidConfig)
	}
	cfg = cfg.WithDefaults()
	if cfg.ConsumerGroup == "" {
		cfg.ConsumerGroup = "sagabox-saga-" + def.name
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	for _, st := range def.steps {
		for _, inv := range []*Invocation[D]{st.Invoke, st.Compensate} {
			if inv != nil && inv.Type != "" {
				if _, ok := cfg.Codec.Schema(inv.Type); !ok {
					return nil, fmt.Errorf("%w: step %q: the codec does not know payload type %s", ErrInvalidConfig, st.Name, inv.Type)
				}
			}
		}
	}
	met, err := newMetrics(cfg.Registerer, def.name)
	if err != nil {
		return nil, fmt.Errorf("saga: register metrics: %w", err)
	}
	o := &Orchestrator[D]{def: def, cfg: cfg, metrics: met,
		log: cfg.Logger.With("component", "saga.orchestrator", "saga_type", def.name)}
	o.m = &machine[D]{def: def, replyTopic: cfg.ReplyTopic, encode: func(typ string, v any) ([]byte, error) {
		return encodePayload(cfg.Codec, typ, v)
	}}
	if cfg.Registry != nil {
		o.decoder = outbox.NewDecoder(cfg.Registry, cfg.Codec)
	}
	return o, nil
}

// Definition returns the orchestrator's definition.
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
	if err := o.m.advance(ctx, e, s, &data); err != nil {
		return uuid.Nil, err
	}
	if err := e.flush(ctx, o.cfg.Writer, s, &data, true, ""); err != nil {
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
	if err := o.m.advance(ctx, e, s, &data); err != nil {
		return uuid.Nil, err
	}
	if err := e.queue(ctx, b, o.cfg.Writer, s, &data, true, ""); err != nil {
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

// handleReply applies one reply in its own transaction: lock the saga, check
// that the reply is the one awaited, apply it, write the next command and
// the new state. It returns whether the reply was used.
func (o *Orchestrator[D]) handleReply(ctx context.Context, r *Reply, causation string) (bool, error) {
	r.codec = o.cfg.Codec
	var e *txEnv[D]
	used := false
	err := pgx.BeginFunc(ctx, o.cfg.Pool, func(tx pgx.Tx) error {
		s, raw, err := loadForUpdate(ctx, tx, o.def.name, r.SagaID)
		if errors.Is(err, ErrNotFound) {
			return nil // cleaned up, or another definition's saga
		}
		if err != nil {
			return err
		}
		data := new(D)
		if err := json.Unmarshal(raw, data); err != nil {
			return fmt.Errorf("saga %s: data: %w", s.ID, err)
		}
		e = &txEnv[D]{tx: tx}
		if used, err = o.m.onReply(ctx, e, s, data, r); err != nil || !used {
			return err
		}
		return e.flush(ctx, o.cfg.Writer, s, data, false, causation)
	})
	if err != nil {
		return false, err
	}
	if !used {
		o.metrics.ignored.Inc()
		o.log.DebugContext(ctx, "saga: ignored reply", "saga_id", r.SagaID, "step", r.Step, "attempt", r.Attempt)
		return false, nil
	}
	o.metrics.record(e.finishes, e.hist)
	return true, nil
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
		if len(items) == 1 {
			errs[0] = err
			return errs
		}
		if ctx.Err() == nil {
			o.log.WarnContext(ctx, "saga: reply batch failed, handling its replies one by one", "replies", len(items), "error", err)
		}
		for i, it := range items {
			_, errs[i] = o.handleReply(ctx, it.r, it.causation)
		}
		return errs
	}
	for range ignored {
		o.metrics.ignored.Inc()
	}
	for _, e := range envs {
		o.metrics.record(e.finishes, e.hist)
	}
	return errs
}

func (o *Orchestrator[D]) applyReplies(ctx context.Context, items []replyItem) (map[uuid.UUID]*txEnv[D], int, error) {
	ids := make([]uuid.UUID, 0, len(items))
	for _, it := range items {
		ids = append(ids, it.r.SagaID)
	}
	first := &pgx.Batch{}
	first.BeginTx(pgx.TxOptions{})
	first.Queue(loadManySQL, sortedKeys(ids), o.def.name)
	ptx, br, err := beginPipe(ctx, o.cfg.Pool, nil, first)
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
		if b, read, err = queueMany(ctx, o.cfg.Writer, saved); err != nil {
			ptx.abort(ctx)
			return nil, 0, err
		}
	}
	if err := ptx.commit(ctx, b, ptx.tx.SendBatch, read); err != nil {
		return nil, 0, err
	}
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
		if datas[id] == nil {
			datas[id] = new(D)
			if err := json.Unmarshal(raws[id], datas[id]); err != nil {
				return nil, 0, nil, fmt.Errorf("saga %s: data: %w", id, err)
			}
			envs[id] = &txEnv[D]{tx: tx}
		}
		it.r.codec = o.cfg.Codec
		used, err := o.m.onReply(ctx, envs[id], s, datas[id], it.r)
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
		return writeDeadLetter(ctx, o.cfg.Pool, o.cfg.Writer, o.cfg.DeadLetterTopic, msg, err)
	}
	if o.batch != nil {
		err = o.batch.do(ctx, replyItem{r: r, causation: msg.UUID})
	} else {
		_, err = o.handleReply(ctx, r, msg.UUID)
	}
	if err != nil && ctx.Err() == nil {
		o.log.ErrorContext(ctx, "saga: handle reply", "saga_id", r.SagaID, "error", err)
	}
	return err
}

func (o *Orchestrator[D]) decodeReply(msg *message.Message) (*Reply, error) {
	var env replyEnvelope
	id, err := decodeEnvelope(o.decoder, msg.Payload, ReplyType, &env)
	if err != nil {
		return nil, err
	}
	return &Reply{SagaID: id, Step: env.Step, Attempt: env.Attempt, Compensation: env.Compensation,
		Outcome: outcomeFromWire(env.Outcome), Reason: env.Reason, PayloadType: env.PayloadType, Payload: env.Payload}, nil
}

// Run consumes replies and fires deadlines and retries until ctx is done.
// Then it stops consuming, lets the reply and the timers in flight finish,
// and returns nil. It needs Brokers and Registry.
func (o *Orchestrator[D]) Run(ctx context.Context) error {
	if len(o.cfg.Brokers) == 0 || o.decoder == nil {
		return fmt.Errorf("%w: Run needs Config.Brokers and Config.Registry", ErrInvalidConfig)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	o.batch = newBatcher(batchWorkers, o.cfg.ReplyBatch, o.handleReplies)
	stopBatch := o.batch.start(ctx, batchWorkers)
	wg.Go(func() {
		defer stopBatch() // after the router: its handlers wait on the batcher
		err := runRouter(ctx, consumeConfig{Brokers: o.cfg.Brokers, ConsumerGroup: o.cfg.ConsumerGroup,
			Topic: o.cfg.ReplyTopic, Sarama: o.cfg.OverwriteSaramaConfig, NackResendSleep: o.cfg.NackResendSleep,
			Logger: o.cfg.Logger, Name: "saga_replies_" + o.def.name}, o.handleMessage)
		if err != nil {
			errs <- err
		}
	})
	wg.Go(func() { o.RunTimers(ctx) })
	if o.cfg.Retention > 0 {
		wg.Go(func() { runCleaner(ctx, o.cfg.Pool, o.cfg.Retention, o.cfg.CleanupInterval, o.log) })
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
			if err := o.cfg.Pool.QueryRow(ctx, `SELECT count(*) FROM sagabox.sagas WHERE saga_type = $1 AND finished_at IS NULL AND status <> 'failed'`, o.def.name).Scan(&n); err == nil {
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

// fireOne handles one saga whose deadline expired or whose retry is due.
func (o *Orchestrator[D]) fireOne(ctx context.Context) (bool, error) {
	var e *txEnv[D]
	did := false
	err := pgx.BeginFunc(ctx, o.cfg.Pool, func(tx pgx.Tx) error {
		e = &txEnv[D]{tx: tx}
		s, raw, req, err := loadDue(ctx, tx, o.def.name, e.now())
		if err != nil || s == nil {
			return err
		}
		data := new(D)
		if err := json.Unmarshal(raw, data); err != nil {
			return fmt.Errorf("saga %s: data: %w", s.ID, err)
		}
		if req != nil { // an operator's request (admin.go) comes before the timers
			did = true
			return o.carryOut(ctx, e, s, data, req)
		}
		if did, err = o.m.onDue(ctx, e, s, data); err != nil || !did {
			return err
		}
		return e.flush(ctx, o.cfg.Writer, s, data, false, "")
	})
	if err != nil || !did {
		return false, err
	}
	o.metrics.record(e.finishes, e.hist)
	return true, nil
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
	return o.operate(ctx, id, Action{Action: ActionRetry}, func(e *txEnv[D], s *state, data *D) error { return o.m.retry(ctx, e, s, data) })
}

// Abort stops a running saga that has not passed its pivot and compensates
// what it did, including the step in flight, at once (Admin.Abort is the
// untyped form). It is recorded in the saga's Actions.
func (o *Orchestrator[D]) Abort(ctx context.Context, id uuid.UUID, reason string) error {
	return o.operate(ctx, id, Action{Action: ActionAbort, Reason: reason}, func(e *txEnv[D], s *state, data *D) error { return o.m.abort(ctx, e, s, data, reason) })
}

func (o *Orchestrator[D]) operate(ctx context.Context, id uuid.UUID, act Action, fn func(*txEnv[D], *state, *D) error) error {
	var e *txEnv[D]
	err := pgx.BeginFunc(ctx, o.cfg.Pool, func(tx pgx.Tx) error {
		s, raw, err := loadForUpdate(ctx, tx, o.def.name, id)
		if err != nil {
			return err
		}
		data := new(D)
		if err := json.Unmarshal(raw, data); err != nil {
			return fmt.Errorf("saga %s: data: %w", s.ID, err)
		}
		e = &txEnv[D]{tx: tx}
		if err := fn(e, s, data); err != nil {
			return err
		}
		act.Result, act.At = ResultDone, e.now().UTC()
		if err := logAction(ctx, tx, s.ID, act, false); err != nil {
			return err
		}
		return e.flush(ctx, o.cfg.Writer, s, data, false, "")
	})
	if err == nil {
		o.metrics.record(e.finishes, e.hist)
	}
	return err
}
