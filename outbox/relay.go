package outbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/internal/saramametrics"
	"github.com/sagabox/sagabox/internal/tracing"
)

// Relay defaults.
const (
	DefaultBatchSize       = 1000
	DefaultWorkers         = 2
	DefaultPollInterval    = 250 * time.Millisecond
	DefaultLeaseTTL        = 5 * time.Second
	DefaultProduceTimeout  = 2 * time.Second
	DefaultMaxAttempts     = 10
	DefaultRetryBackoff    = 200 * time.Millisecond
	DefaultMaxRetryBackoff = 30 * time.Second
	DefaultCleanupInterval = time.Minute
	DefaultCleanupBatch    = 1000
	DefaultMaxMessageBytes = 1000000
	DefaultVacuumAfter     = 10000
)

// RelayConfig configures a Relay.
type RelayConfig struct {
	// Pool is the database the outbox lives in. Required.
	Pool *pgxpool.Pool
	// Brokers are Kafka bootstrap addresses. Required.
	Brokers []string
	// Registry is the Schema Registry the schemas are registered in.
	// Required. Build one with srclient.NewSchemaRegistryClient(url).
	Registry srclient.ISchemaRegistryClient

	// ID names this relay in the lease table. Defaults to hostname-pid-random.
	ID string
	// BatchSize is the most messages one worker publishes per produce
	// request. Defaults to DefaultBatchSize.
	BatchSize int
	// Workers is how many batches the relay has in flight at once under
	// load, each for its own share of the shards it owns (so per-key order
	// holds): while one waits for Kafka, another reads or marks in
	// Postgres. While batches come back short, one batch covers all the
	// shards (a fetch per worker would mostly find nothing). Each worker
	// uses up to two pool connections. Defaults to DefaultWorkers.
	Workers int
	// PollInterval is how often the relay looks for messages when nothing
	// woke it. Defaults to DefaultPollInterval.
	PollInterval time.Duration
	// LeaseTTL is how long a shard lease lasts without renewal: the time
	// another relay waits before taking over the shards of one that died.
	// Leases are renewed every LeaseTTL/5. Defaults to DefaultLeaseTTL.
	LeaseTTL time.Duration
	// ProduceTimeout bounds one produce request. It must be well below
	// LeaseTTL. Defaults to DefaultProduceTimeout.
	ProduceTimeout time.Duration
	// MaxAttempts is how many failed publish attempts park a message.
	// Failures that no retry can fix (a record over the size limit) park it
	// at once; registry outages do not count. Defaults to DefaultMaxAttempts.
	MaxAttempts int
	// RetryBackoff is the wait after a message's first failure; it doubles
	// each attempt up to MaxRetryBackoff. Defaults to DefaultRetryBackoff and
	// DefaultMaxRetryBackoff.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// MaxMessageBytes is the largest record the relay sends; larger ones are
	// parked without being sent. Keep it at or below the topic's
	// max.message.bytes. Defaults to DefaultMaxMessageBytes.
	MaxMessageBytes int
	// ArchiveFor is how long published messages are kept in
	// sagabox.outbox_archive. Zero, the default, archives nothing: a row is
	// deleted as soon as Kafka has it, which is the fastest. With a
	// duration, published rows move to the archive, and the relay holding
	// shard 0 deletes archived messages older than ArchiveFor in batches of
	// CleanupBatch every CleanupInterval (defaults DefaultCleanupBatch and
	// DefaultCleanupInterval; unused without ArchiveFor).
	ArchiveFor      time.Duration
	CleanupInterval time.Duration
	CleanupBatch    int
	// VacuumAfter is how many rows the relay removes from sagabox.outbox
	// before it runs VACUUM on it, as soon as it has caught up with the
	// backlog (during one a vacuum would mostly read pending rows). The
	// outbox is a queue table: every
	// published message leaves a dead row behind, and between two
	// autovacuum runs (at most one a minute per database by default) the
	// relay's fetch would read through all of them, slower with every
	// message. Vacuuming a table that holds only the pending rows takes a
	// few milliseconds. While its batches come back short (everyday load)
	// the relay does not wait for VacuumAfter rows: it vacuums once it has
	// removed 256 of them, at most once a second. It needs the relay's
	// database user to own the table (as when it ran Migrate); if it does not, the relay says so once and
	// stops trying, and autovacuum has to be tuned for the table instead.
	// Defaults to DefaultVacuumAfter.
	VacuumAfter int
	// DisableVacuum stops the relay from vacuuming the outbox (leave it to
	// a tuned autovacuum). VacuumAfter is then unused.
	DisableVacuum bool
	// ListenChannel, when set, makes the relay LISTEN on that channel and
	// poll when a writer with the same WriterConfig.NotifyChannel commits.
	ListenChannel string
	// Logger defaults to a logger that discards everything.
	Logger *slog.Logger
	// Registerer is where the relay's metrics (sagabox_outbox_*) are
	// registered. Relays sharing a registerer share the collectors, so two
	// relays in one process add up. Defaults to none: metrics are kept but
	// not exported.
	Registerer prometheus.Registerer
	// OverwriteSaramaConfig replaces the Sarama configuration the relay
	// builds (TLS, SASL, compression...). The relay still sets what its
	// protocol needs: client ID default, version, timeouts.
	OverwriteSaramaConfig *sarama.Config
	// Topics are topics the relay is expected to publish to: their
	// sagabox_outbox_published_total series exist at 0 from the start, so
	// that an alert on their rate reads 0, not "no data". Other topics'
	// series appear with their first message. sagabox.Client sets the
	// topics of its Publishes.
	Topics []string
	// TracerProvider makes the relay's "publish" spans: one per message
	// that carries a trace context, a child of it, whose context the
	// Kafka record's traceparent header then carries. Defaults to the
	// global provider (otel.GetTracerProvider), a no-op until one is set.
	// Messages without a trace context start no span.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns a copy of c with every unset field filled in.
func (c RelayConfig) WithDefaults() RelayConfig {
	if c.ID == "" {
		host, _ := os.Hostname()
		var b [3]byte
		_, _ = rand.Read(b[:])
		c.ID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	defInt(&c.BatchSize, DefaultBatchSize)
	defInt(&c.Workers, DefaultWorkers)
	def(&c.PollInterval, DefaultPollInterval)
	def(&c.LeaseTTL, DefaultLeaseTTL)
	def(&c.ProduceTimeout, DefaultProduceTimeout)
	defInt(&c.MaxAttempts, DefaultMaxAttempts)
	def(&c.RetryBackoff, DefaultRetryBackoff)
	def(&c.MaxRetryBackoff, DefaultMaxRetryBackoff)
	defInt(&c.MaxMessageBytes, DefaultMaxMessageBytes)
	def(&c.CleanupInterval, DefaultCleanupInterval)
	defInt(&c.CleanupBatch, DefaultCleanupBatch)
	defInt(&c.VacuumAfter, DefaultVacuumAfter)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c RelayConfig) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: RelayConfig.%s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"BatchSize", int64(c.BatchSize)}, {"Workers", int64(c.Workers)}, {"PollInterval", int64(c.PollInterval)},
		{"LeaseTTL", int64(c.LeaseTTL)}, {"ProduceTimeout", int64(c.ProduceTimeout)}, {"MaxAttempts", int64(c.MaxAttempts)},
		{"RetryBackoff", int64(c.RetryBackoff)}, {"MaxRetryBackoff", int64(c.MaxRetryBackoff)},
		{"MaxMessageBytes", int64(c.MaxMessageBytes)}, {"ArchiveFor", int64(c.ArchiveFor)},
		{"CleanupInterval", int64(c.CleanupInterval)}, {"CleanupBatch", int64(c.CleanupBatch)}, {"VacuumAfter", int64(c.VacuumAfter)},
	} {
		if f.v < 0 {
			return bad("%s must not be negative (zero means the default), got %d", f.name, f.v)
		}
	}
	switch {
	case c.Pool == nil:
		return bad("Pool is required")
	case len(c.Brokers) == 0:
		return bad("Brokers is required")
	case c.Registry == nil:
		return bad("Registry is required: srclient.NewSchemaRegistryClient(url)")
	case c.LeaseTTL < 2*c.ProduceTimeout+c.LeaseTTL/5:
		return bad("LeaseTTL (%s) must exceed 2*ProduceTimeout + LeaseTTL/5 (%s): a relay must not publish on a lease that may expire mid-request",
			c.LeaseTTL, 2*c.ProduceTimeout+c.LeaseTTL/5)
	case c.RetryBackoff > c.MaxRetryBackoff:
		return bad("RetryBackoff (%s) must not exceed MaxRetryBackoff (%s)", c.RetryBackoff, c.MaxRetryBackoff)
	}
	return nil
}

// closeClient closes client and every broker connection the producers used.
// Sarama's Client.Close closes its brokers asynchronously and skips one
// whose connection is still being opened (after a failed request, the next
// one reopens it), which then stays open for good. Broker.Close waits for
// an Open in progress, so closing each broker ourselves leaves none behind.
func closeClient(client sarama.Client, producers []*batchProducer) {
	used := map[*sarama.Broker]bool{}
	for _, b := range client.Brokers() {
		used[b] = true
	}
	for _, p := range producers {
		p.mu.Lock()
		for b := range p.brokers {
			used[b] = true
		}
		p.mu.Unlock()
	}
	_ = client.Close()
	for b := range used {
		_ = b.Close()
	}
}

// Relay publishes the outbox to Kafka. Run several, in one process or many:
// they split the shards between them and take over from each other.
type Relay struct {
	cfg      RelayConfig
	log      *slog.Logger
	m        *metrics
	leases   *leases
	schemas  *schemaResolver
	wake     chan struct{}
	notified atomic.Int64 // unix nanos of the last Notify
	ownsZero atomic.Bool
	running  atomic.Bool
	removed  atomic.Int64 // rows removed from the outbox since the last VACUUM
	// lastVacuum: unix nanos of the last VACUUM (or of NewRelay).
	lastVacuum atomic.Int64
	vacuum     chan struct{}
	// vacuumChecked: whether the relay may vacuum has been checked (only
	// the housekeeping goroutine touches it); vacuumOff: it may not.
	vacuumChecked bool
	vacuumOff     atomic.Bool
	// spread: the last round's batch came back full, so the next runs a
	// cycle per worker (round); only Run's goroutine touches it.
	spread bool

	tracer trace.Tracer

	testHookBeforeProduce func()         // tests: block a worker mid-batch
	testHookFetch         func(int, int) // tests: shards a cycle fetches, BatchSize rows fetched
}

// NewRelay checks cfg and returns a relay ready to Run.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	for _, t := range cfg.Topics {
		m.published.WithLabelValues(t)
	}
	if c, ok := cfg.Registry.(*srclient.SchemaRegistryClient); ok {
		c.CodecCreationEnabled(false) // we parse schemas with hamba/avro
		c.SetTimeout(cfg.ProduceTimeout)
	}
	return &Relay{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "outbox.relay", "relay_id", cfg.ID),
		m:       m,
		leases:  &leases{pool: cfg.Pool, id: cfg.ID, ttl: cfg.LeaseTTL},
		schemas: newSchemaResolver(cfg.Pool, cfg.Registry),
		wake:    make(chan struct{}, 1),
		vacuum:  make(chan struct{}, 1),
		tracer:  tracing.Tracer(cfg.TracerProvider, "outbox"),
	}, nil
}

// Notify wakes the relay: it polls at once and, for a short while, often,
// so a message whose transaction is about to commit goes out within
// milliseconds. Pass it as WriterConfig.Notify. Safe to call any time.
func (r *Relay) Notify() {
	r.notified.Store(time.Now().UnixNano())
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// NotifyCommitted wakes the relay for rows that are already committed: it
// polls at once, and only once. Pass it as WriterConfig.NotifyCommitted, for
// writers that call the function of Writer.DeferNotify after their commit.
// Safe to call any time.
func (r *Relay) NotifyCommitted() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// After a Notify the relay polls again quickly, since the writer's
// transaction usually commits within milliseconds: first after
// fastPollInterval, then twice as long after each empty poll, until
// fastPollWindow has passed since the last Notify. Empty polls are cheap
// index lookups; under steady load every poll finds work.
const (
	fastPollWindow      = 250 * time.Millisecond
	fastPollInterval    = 2 * time.Millisecond
	fastPollMaxInterval = 32 * time.Millisecond
)

// Run publishes until ctx is done. It then finishes the batch in flight
// (bounded by ProduceTimeout), releases its leases so another relay takes
// over at once, and returns nil. It returns an error only when it cannot
// start (Kafka unreachable until ctx ends counts as shutdown, not an error).
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("outbox: Relay.Run was called twice: a relay runs once; build another with NewRelay to run again")
	}

	client, conf, err := r.connect(ctx)
	if err != nil && ctx.Err() != nil {
		// Stopped before Kafka answered: one bounded try more, for the
		// last pass (drain) over what is already waiting.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
		client, conf, err = r.connect(cctx)
		cancel()
		if err != nil {
			return nil
		}
	}
	if err != nil {
		return err
	}
	// One producer (one Kafka producer ID, its own sequence numbers) per
	// worker, so that workers never interleave sequence numbers.
	producers := make([]*batchProducer, r.cfg.Workers)
	for i := range producers {
		producers[i] = newBatchProducer(client, conf, r.cfg.MaxMessageBytes, 3, 50*time.Millisecond, r.log)
	}
	defer closeClient(client, producers)

	var wg sync.WaitGroup
	defer wg.Wait()
	housekeepingCtx, stopHousekeeping := context.WithCancel(ctx)
	defer stopHousekeeping()
	wg.Add(1)
	go func() { defer wg.Done(); r.housekeeping(housekeepingCtx) }()
	if r.cfg.ListenChannel != "" {
		wg.Add(1)
		go func() { defer wg.Done(); r.listen(housekeepingCtx) }()
	}

	r.log.Info("outbox relay: started", "brokers", r.cfg.Brokers)
	renewEvery := r.cfg.LeaseTTL / 5
	errBackoff := r.cfg.RetryBackoff
	fastDelay, lastNotified := fastPollInterval, int64(0)
	ownedBefore := -1
	ownedReported := 0 // what this relay added to the shared owned_shards gauge
	for {
		if ctx.Err() != nil {
			break
		}
		if time.Since(r.leases.lastTick) >= renewEvery {
			if err := r.leases.tick(ctx); err != nil {
				if ctx.Err() != nil {
					break
				}
				r.log.Warn("outbox relay: lease renewal failed", "err", err)
				r.sleep(ctx, errBackoff)
				continue
			}
			r.ownsZero.Store(len(r.leases.owned) > 0 && r.leases.owned[0] == 0)
			if n := len(r.leases.owned); n != ownedBefore {
				r.log.Info("outbox relay: shards owned", "count", n, "shards", r.leases.owned)
				ownedBefore = n
			}
			r.m.ownedShards.Add(float64(len(r.leases.owned) - ownedReported))
			ownedReported = len(r.leases.owned)
		}
		if len(r.leases.owned) == 0 || time.Until(r.leases.deadline) < 2*r.cfg.ProduceTimeout {
			r.wait(ctx, renewEvery)
			continue
		}
		// In-flight work runs on a context that shutdown does not cancel,
		// so a batch that reached Kafka is also marked published.
		work, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*r.cfg.ProduceTimeout)
		n, err := r.round(work, producers)
		cancel()
		if errors.Is(err, errLeaseLapsed) {
			// Renew (and learn what it still owns) before touching any
			// shard again.
			r.log.Warn("outbox relay: lost a lease mid-batch; renewing before going on", "err", err)
			r.leases.lastTick = time.Time{}
			continue
		}
		if err != nil {
			r.log.Warn("outbox relay: batch failed", "err", err)
			r.sleep(ctx, errBackoff)
			errBackoff = min(2*errBackoff, r.cfg.MaxRetryBackoff)
			continue
		}
		errBackoff = r.cfg.RetryBackoff
		notified := r.notified.Load()
		if n > 0 || notified != lastNotified {
			fastDelay, lastNotified = fastPollInterval, notified
		}
		switch {
		case n >= r.cfg.BatchSize:
			// More is waiting: go again at once.
		case time.Since(time.Unix(0, notified)) < fastPollWindow:
			r.wait(ctx, fastDelay)
			fastDelay = min(2*fastDelay, fastPollMaxInterval)
		default:
			r.wait(ctx, min(r.cfg.PollInterval, time.Until(r.leases.lastTick.Add(renewEvery))))
		}
	}

	// A last pass over the shards it owns: what the parts that stop before
	// the relay (consumers, HTTP handlers) wrote while stopping, their last
	// replies and events, is published now rather than at the next start.
	r.drain(ctx, producers)
	stopHousekeeping()
	relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.leases.release(relCtx); err != nil {
		r.log.Warn("outbox relay: release leases at shutdown", "err", err)
	}
	r.m.ownedShards.Sub(float64(ownedReported))
	r.log.Info("outbox relay: stopped")
	return nil
}

// drainTimeout bounds the relay's last pass at shutdown.
const drainTimeout = 10 * time.Second

// drain publishes what is pending in the owned shards, batch after batch,
// until a batch comes back short, one fails, the leases are about to
// expire or drainTimeout has passed.
func (r *Relay) drain(ctx context.Context, producers []*batchProducer) {
	until := time.Now().Add(drainTimeout)
	if r.leases.lastTick.IsZero() { // stopped before the first lease tick
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.LeaseTTL)
		err := r.leases.tick(tctx)
		cancel()
		if err != nil {
			r.log.Warn("outbox relay: no leases for the last pass at shutdown", "err", err)
			return
		}
	}
	for time.Now().Before(until) && len(r.leases.owned) > 0 && time.Until(r.leases.deadline) >= 2*r.cfg.ProduceTimeout {
		work, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*r.cfg.ProduceTimeout)
		n, err := r.round(work, producers)
		cancel()
		if err != nil {
			r.log.Warn("outbox relay: last pass at shutdown failed; the rest waits for the next relay", "err", err)
			return
		}
		if n < r.cfg.BatchSize {
			return
		}
	}
}

func (r *Relay) wait(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-r.wake:
	case <-t.C:
	}
}

func (r *Relay) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// connect builds the Sarama client, retrying with capped backoff for as long
// as ctx lasts: Sarama gives up on unreachable brokers within a second, the
// relay does not.
func (r *Relay) connect(ctx context.Context) (sarama.Client, *sarama.Config, error) {
	conf := r.cfg.OverwriteSaramaConfig
	if conf == nil {
		conf = sarama.NewConfig()
		conf.MetricRegistry = saramametrics.Off() // sagabox has its own metrics; Sarama's cost CPU per request
	}
	if conf.ClientID == "" || conf.ClientID == "sarama" {
		conf.ClientID = "sagabox-relay"
	}
	conf.Version = sarama.V2_1_0_0
	conf.Producer.Timeout = r.cfg.ProduceTimeout
	conf.Producer.RequiredAcks = sarama.WaitForAll
	conf.Net.DialTimeout = r.cfg.ProduceTimeout
	conf.Net.ReadTimeout = r.cfg.ProduceTimeout + time.Second
	conf.Net.WriteTimeout = r.cfg.ProduceTimeout
	conf.Metadata.Retry.Max = 1
	conf.Metadata.Retry.Backoff = 50 * time.Millisecond
	conf.Metadata.AllowAutoTopicCreation = true
	if err := conf.Validate(); err != nil {
		return nil, nil, fmt.Errorf("outbox: sarama config: %w", err)
	}
	backoff := r.cfg.RetryBackoff
	for {
		client, err := sarama.NewClient(r.cfg.Brokers, conf)
		if err == nil {
			return client, conf, nil
		}
		r.log.Warn("outbox relay: kafka unreachable, retrying", "err", err, "in", backoff)
		r.sleep(ctx, backoff)
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		backoff = min(2*backoff, r.cfg.MaxRetryBackoff)
	}
}

// fencedShards is the fence of every statement that reads or marks a batch:
// of the shards in the shards parameter, only those whose lease row still
// names this relay (the owner parameter) at the epoch it took them with (the
// epochs parameter). A relay that lost a shard, even one that does not know
// it yet, touches none of its rows. ARRAY(...) is evaluated once per
// statement, so the outer "shard = ANY" keeps its plan.
func fencedShards(shards, epochs, owner string) string {
	return `ARRAY(SELECT l.shard FROM sagabox.outbox_leases l
		JOIN unnest(` + shards + `::smallint[], ` + epochs + `::bigint[]) AS f(shard, epoch) USING (shard, epoch)
		WHERE l.owner = ` + owner + `)`
}

// fetchSQL reads the next batch of the owned shards in id order. A key whose
// oldest pending message is backing off after a failure is held back whole
// (the blocked CTE, served by the small outbox_backoff index), so retries
// never reorder a key while other keys keep moving.
var fetchSQL = `
WITH blocked AS (
	SELECT topic, key, min(id) AS from_id FROM sagabox.outbox
	WHERE next_attempt_at IS NOT NULL AND parked_at IS NULL
	  AND next_attempt_at > now() AND key <> '' AND shard = ANY($1)
	GROUP BY topic, key
)
SELECT o.id, o.message_id::text, o.topic, o.key, o.value, o.schema_fp, o.message_type,
       o.correlation_id, o.causation_id, o.saga_id, o.traceparent, o.tracestate, o.headers::text, o.attempts
FROM sagabox.outbox o
WHERE o.parked_at IS NULL AND o.shard = ANY(` + fencedShards("$1", "$3", "$4") + `)
  AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
  AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.topic = o.topic AND b.key = o.key AND o.id > b.from_id)
ORDER BY o.id
LIMIT $2`

// Marking a batch: published rows are deleted (one index-driven DELETE, far
// cheaper than updating a state column), or moved to the archive when a
// ArchiveFor is set; failed rows get their attempt, backoff and error. The
// "id = ANY" conditions keep the planner on the primary key whatever the
// array sizes. Every statement is fenced (fencedShards): $2 the shards of
// the batch, $3 their epochs, $4 this relay.
var (
	deletePublishedSQL  = `DELETE FROM sagabox.outbox o WHERE o.id = ANY($1) AND o.shard = ANY(` + fencedShards("$2", "$3", "$4") + `)`
	archivePublishedSQL = `
WITH done AS (DELETE FROM sagabox.outbox o WHERE o.id = ANY($1) AND o.shard = ANY(` + fencedShards("$2", "$3", "$4") + `) RETURNING o.*)
INSERT INTO sagabox.outbox_archive (id, message_id, topic, key, value, schema_fp, message_type,
	correlation_id, causation_id, saga_id, traceparent, headers, created_at, attempts)
SELECT id, message_id, topic, key, value, schema_fp, message_type,
	correlation_id, causation_id, saga_id, traceparent, headers, created_at, attempts
FROM done`
	markFailedSQL = `
UPDATE sagabox.outbox o SET
	attempts        = o.attempts + u.inc,
	next_attempt_at = now() + u.delay_ms * interval '1 millisecond',
	last_error      = u.err,
	parked_at       = CASE WHEN u.park THEN now() END
FROM unnest($1::bigint[], $5::int[], $6::bigint[], $7::text[], $8::bool[]) AS u(id, inc, delay_ms, err, park)
WHERE o.id = u.id AND o.id = ANY($1) AND o.shard = ANY(` + fencedShards("$2", "$3", "$4") + `)`
)

// errLeaseLapsed: a batch was dropped, or not marked, because the relay no
// longer holds (or may no longer hold) the lease of its shards.
var errLeaseLapsed = errors.New("the lease of a shard lapsed or changed hands")

type row struct {
	id                                      int64
	messageID, topic, key                   string
	value, fp                               []byte
	typ, corr, cause, saga, tp, ts, headers string
	attempts                                int
}

type outcome struct {
	ok       bool
	inc      int
	delayMS  int64
	err      string
	park     bool
	recorded bool
}

// round publishes one batch of the owned shards. While the last round came
// back short (everything pending fitted in one batch: everyday load) it is
// one cycle over all of them: one fetch, one produce, one mark, where a
// cycle per worker would spend a fetch per worker to find its share empty.
// Once a batch comes back full, work is queued and the workers share it:
// one cycle per worker at once, each on its own share of the owned shards
// (shard i goes to worker i mod Workers), so while one waits for Kafka
// another reads or marks in Postgres. A key lives in one shard and rounds
// run one after another, so its messages keep their order in both modes.
// It returns the most rows any cycle fetched, so the caller goes again at
// once while a batch came back full.
func (r *Relay) round(ctx context.Context, producers []*batchProducer) (int, error) {
	if len(producers) == 1 || !r.spread {
		n, err := r.cycle(ctx, producers[0], r.leases.owned, r.leases.epochs)
		r.spread = err == nil && len(producers) > 1 && n >= r.cfg.BatchSize
		return n, err
	}
	shares := make([][]int16, len(producers))
	for i, s := range r.leases.owned {
		shares[i%len(shares)] = append(shares[i%len(shares)], s)
	}
	var (
		wg   sync.WaitGroup
		ns   = make([]int, len(producers))
		errs = make([]error, len(producers))
	)
	for i := range producers {
		if len(shares[i]) == 0 {
			continue
		}
		epochs := r.leases.epochsOf(shares[i])
		wg.Go(func() { ns[i], errs[i] = r.cycle(ctx, producers[i], shares[i], epochs) })
	}
	wg.Wait()
	n, err := slices.Max(ns), errors.Join(errs...)
	r.spread = err == nil && n >= r.cfg.BatchSize
	return n, err
}

// cycle publishes one batch of the given shards, held at the given epochs:
// fetch, frame, produce, mark. It returns how many rows it fetched.
func (r *Relay) cycle(ctx context.Context, producer *batchProducer, shards []int16, epochs []int64) (int, error) {
	start := time.Now()
	rows, err := r.cfg.Pool.Query(ctx, fetchSQL, shards, r.cfg.BatchSize, epochs, r.cfg.ID)
	if err != nil {
		return 0, fmt.Errorf("fetch: %w", err)
	}
	batch, err := pgx.CollectRows(rows, func(rw pgx.CollectableRow) (row, error) {
		var x row
		err := rw.Scan(&x.id, &x.messageID, &x.topic, &x.key, &x.value, &x.fp, &x.typ,
			&x.corr, &x.cause, &x.saga, &x.tp, &x.ts, &x.headers, &x.attempts)
		return x, err
	})
	if err != nil {
		return 0, fmt.Errorf("fetch: %w", err)
	}
	if r.testHookFetch != nil {
		r.testHookFetch(len(shards), len(batch))
	}
	if len(batch) < r.cfg.BatchSize {
		r.maybeVacuum()
	}
	if len(batch) == 0 {
		return 0, nil
	}

	outcomes := make([]outcome, len(batch))
	held := map[string]bool{} // keys held back in this batch after a failure
	keyOf := func(x *row) string { return x.topic + "\x00" + x.key }
	var (
		recs  []record
		recOf []int        // recs index -> batch index
		spans []trace.Span // recs index -> publish span, when traced
	)
	for i := range batch {
		x := &batch[i]
		if x.key != "" && held[keyOf(x)] {
			continue // an earlier message of this key did not go out
		}
		id, err := r.schemas.resolve(ctx, x.topic, x.fp)
		if err != nil {
			outcomes[i] = r.failure(x, err, false)
			if x.key != "" {
				held[keyOf(x)] = true
			}
			continue
		}
		if x.tp != "" {
			if spans == nil {
				spans = make([]trace.Span, len(recs), len(batch))
			}
			spans = append(spans, r.publishSpan(ctx, x))
		} else if spans != nil {
			spans = append(spans, nil)
		}
		recs = append(recs, record{topic: x.topic, key: keyBytes(x.key), value: frame(id, x.value), headers: recordHeaders(x)})
		recOf = append(recOf, i)
	}
	defer func() {
		for _, s := range spans {
			if s != nil {
				s.End() // a batch dropped before its produce (a lapsed lease)
			}
		}
	}()
	if len(recs) > 0 {
		if r.testHookBeforeProduce != nil {
			r.testHookBeforeProduce()
		}
		// The fetch proved the lease; a pause since (GC, a frozen VM, a
		// slow registry) may have outlived it. Kafka cannot check a
		// Postgres lease, so the relay checks its own conservative
		// deadline and drops the batch rather than publish rows another
		// relay may own by now: they stay pending for the owner.
		deadline := r.leases.deadline
		if time.Until(deadline) < r.cfg.ProduceTimeout {
			r.m.fenced.Add(float64(len(batch)))
			return 0, fmt.Errorf("%w: %d messages not published (lease deadline %s)", errLeaseLapsed, len(batch), deadline.Format(time.RFC3339Nano))
		}
		pctx, cancel := context.WithDeadline(ctx, deadline.Add(-r.cfg.ProduceTimeout))
		results := producer.produce(pctx, recs)
		cancel()
		for j, err := range results {
			i := recOf[j]
			x := &batch[i]
			if spans != nil && spans[j] != nil {
				endSpan(spans[j], err)
				spans[j] = nil
			}
			if err == nil {
				outcomes[i] = outcome{ok: true, recorded: true}
				continue
			}
			var pe *produceError
			permanent := errors.As(err, &pe) && pe.permanent
			if x.key != "" && held[keyOf(x)] && !permanent {
				continue // only the oldest failed message of a key backs off
			}
			outcomes[i] = r.failure(x, err, permanent)
			if x.key != "" && !permanent {
				held[keyOf(x)] = true
			}
		}
	}
	if err := r.mark(ctx, batch, outcomes, shards, epochs); err != nil {
		return 0, err
	}
	r.m.batchSize.Observe(float64(len(batch)))
	r.m.batchDuration.Observe(time.Since(start).Seconds())
	return len(batch), nil
}

// failure decides what a failed message becomes: backing off with one more
// attempt, or parked. Registry outages back off without spending attempts.
func (r *Relay) failure(x *row, err error, permanent bool) outcome {
	if errors.Is(err, ErrRegistryUnavailable) {
		return outcome{delayMS: r.cfg.RetryBackoff.Milliseconds(), err: err.Error(), recorded: true}
	}
	attempts := x.attempts + 1
	park := permanent || attempts >= r.cfg.MaxAttempts
	delay := r.cfg.RetryBackoff << min(attempts-1, 30)
	if delay > r.cfg.MaxRetryBackoff || delay <= 0 {
		delay = r.cfg.MaxRetryBackoff
	}
	if park {
		r.log.Error("outbox relay: message parked", "message_id", x.messageID, "topic", x.topic, "key", x.key, "attempts", attempts, "err", err)
		r.m.failed.WithLabelValues(failedParked).Inc()
	} else {
		r.log.Warn("outbox relay: publish failed, will retry", "message_id", x.messageID, "topic", x.topic, "attempts", attempts, "in", delay, "err", err)
		r.m.failed.WithLabelValues(failedRetry).Inc()
	}
	return outcome{inc: 1, delayMS: delay.Milliseconds(), err: err.Error(), park: park, recorded: true}
}

func (r *Relay) mark(ctx context.Context, batch []row, outcomes []outcome, shards []int16, epochs []int64) error {
	var (
		done   []int64
		ids    []int64
		incs   []int32
		delays []int64
		errs   []string
		parks  []bool
	)
	published := map[string]int{}
	for i, o := range outcomes {
		switch {
		case !o.recorded:
		case o.ok:
			done = append(done, batch[i].id)
			published[batch[i].topic]++
		default:
			ids = append(ids, batch[i].id)
			incs = append(incs, int32(o.inc))
			delays = append(delays, o.delayMS)
			errs = append(errs, o.err)
			parks = append(parks, o.park)
		}
	}
	b := &pgx.Batch{}
	if len(done) > 0 {
		if r.cfg.ArchiveFor > 0 {
			b.Queue(archivePublishedSQL, done, shards, epochs, r.cfg.ID)
		} else {
			b.Queue(deletePublishedSQL, done, shards, epochs, r.cfg.ID)
		}
	}
	if len(ids) > 0 {
		b.Queue(markFailedSQL, ids, shards, epochs, r.cfg.ID, incs, delays, errs, parks)
	}
	if b.Len() == 0 {
		return nil
	}
	// One round trip; the statements of a batch run in one implicit
	// transaction.
	br := r.cfg.Pool.SendBatch(ctx, b)
	var marked int64
	for range b.Len() {
		tag, err := br.Exec()
		if err != nil {
			_ = br.Close()
			// Whatever reached Kafka is still pending and will be
			// published again (at-least-once; consumers deduplicate by
			// message ID).
			return fmt.Errorf("mark %d messages: %w", len(done)+len(ids), err)
		}
		marked += tag.RowsAffected()
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("mark %d messages: %w", len(done)+len(ids), err)
	}
	for topic, n := range published {
		r.m.published.WithLabelValues(topic).Add(float64(n))
	}
	r.removed.Add(int64(len(done)))
	if want := int64(len(done) + len(ids)); marked < want {
		// Only a shard's owner deletes or marks its pending rows, so
		// rows the fence left alone belong to a relay that took the
		// shard over: it publishes them again (duplicates bounded by
		// this batch) and this relay must renew before going on.
		r.m.fenced.Add(float64(want - marked))
		return fmt.Errorf("%w: %d of %d messages not marked", errLeaseLapsed, want-marked, want)
	}
	return nil
}

// maybeVacuum asks for a VACUUM of the outbox once VacuumAfter rows were
// removed since the last one. The relay calls it when a fetch came back
// short of a full batch, that is when it has caught up: then the table
// holds few pending rows and the dead ones are most of what a fetch reads.
// During a backlog a vacuum would read every pending row to clear a few
// dead ones (draining a 50,000-message backlog, vacuuming every 10,000
// removed rows cost 15 % of the throughput).
func (r *Relay) maybeVacuum() {
	if r.cfg.DisableVacuum || r.vacuumOff.Load() {
		return
	}
	removed := r.removed.Load()
	quiet := removed >= int64(min(quietVacuumRows, r.cfg.VacuumAfter)) &&
		time.Since(time.Unix(0, r.lastVacuum.Load())) >= quietVacuumEvery
	if removed < int64(r.cfg.VacuumAfter) && !quiet {
		return
	}
	select {
	case r.vacuum <- struct{}{}:
	default:
	}
}

// At everyday load VacuumAfter rows take minutes to come, and until then
// every fetch reads through the dead rows left since the last vacuum (at
// 300 messages a second, the relay's Postgres backends spent more CPU on
// that than at 2,000 a second). So while batches come back short the relay
// also vacuums once it has removed quietVacuumRows, at most every
// quietVacuumEvery: a vacuum of a table that holds little but dead rows
// takes a millisecond or two.
const (
	quietVacuumRows  = 256
	quietVacuumEvery = time.Second
)

func keyBytes(k string) []byte {
	if k == "" {
		return nil
	}
	return []byte(k)
}

// publishSpan starts the publish span of a row that carries a trace
// context, as its child, and makes the row (and so the record's headers)
// carry the span's context instead when it records.
func (r *Relay) publishSpan(ctx context.Context, x *row) trace.Span {
	parent := tracing.Parse(x.tp, x.ts)
	if !parent.IsValid() {
		return nil
	}
	_, span := r.tracer.Start(tracing.ContextWith(ctx, parent), "publish "+x.topic, trace.WithSpanKind(trace.SpanKindProducer))
	if !span.IsRecording() {
		return span
	}
	span.SetAttributes(tracing.Messaging(tracing.OpSend, "publish", x.topic)...)
	span.SetAttributes(tracing.MessageID(x.messageID), tracing.KafkaKey(x.key))
	if x.saga != "" {
		span.SetAttributes(tracing.SagaID.String(x.saga))
	}
	if x.attempts > 0 {
		span.SetAttributes(attribute.Int("sagabox.outbox.attempt", x.attempts+1))
	}
	x.tp, x.ts = tracing.Format(span.SpanContext())
	return span
}

func recordHeaders(x *row) []sarama.RecordHeader {
	hs := make([]sarama.RecordHeader, 0, 8)
	add := func(k, v string) {
		if v != "" {
			hs = append(hs, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
		}
	}
	add(HeaderID, x.messageID)
	add(HeaderType, x.typ)
	add(HeaderCorrelationID, x.corr)
	add(HeaderCausationID, x.cause)
	add(HeaderSagaID, x.saga)
	add(HeaderTraceparent, x.tp)
	add(HeaderTracestate, x.ts)
	if x.headers != "" && x.headers != "{}" {
		var extra map[string]string
		if json.Unmarshal([]byte(x.headers), &extra) == nil {
			for k, v := range extra {
				hs = append(hs, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
			}
		}
	}
	return hs
}

// listen wakes the relay on NOTIFY from writers in other processes.
func (r *Relay) listen(ctx context.Context) {
	backoff := r.cfg.RetryBackoff
	for ctx.Err() == nil {
		err := func() error {
			conn, err := r.cfg.Pool.Acquire(ctx)
			if err != nil {
				return err
			}
			defer conn.Release()
			if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{r.cfg.ListenChannel}.Sanitize()); err != nil {
				return err
			}
			defer func() {
				// Do not hand a LISTENing connection back to the pool.
				_ = conn.Conn().Close(context.WithoutCancel(ctx))
			}()
			for {
				if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
					return err
				}
				// NOTIFY is delivered once the writer's transaction
				// has committed: its rows are there to fetch now.
				r.NotifyCommitted()
			}
		}()
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("outbox relay: listen failed, retrying", "channel", r.cfg.ListenChannel, "err", err)
		r.sleep(ctx, backoff)
		backoff = min(2*backoff, r.cfg.MaxRetryBackoff)
	}
}
