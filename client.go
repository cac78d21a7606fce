package sagabox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// ErrInvalidConfig means NewClient refused its Config; the message names
// the field. Match it with errors.Is.
var ErrInvalidConfig = errors.New("sagabox: invalid config")

// Config configures a Client. Only the schemas are needed to write; Brokers
// and a registry make it publish and consume.
type Config struct {
	// Brokers are Kafka's bootstrap addresses. Empty: the client only
	// writes; what it writes waits in the outbox, Run relays nothing, and
	// orchestrators, participants and consumers do not attach (Run runs
	// only the parts you attached, such as an HTTP server). A service can
	// so serve its API while Kafka is being set up.
	Brokers []string
	// RegistryURL is the Schema Registry. Required with Brokers unless
	// Registry is set.
	RegistryURL string
	// Registry, when set, is used instead of a client of RegistryURL.
	Registry srclient.ISchemaRegistryClient

	// Schemas are the Avro definitions (JSON) of every value the service
	// writes or reads: events, saga command and reply payloads. The saga
	// envelopes (saga.Schemas) are added by the client.
	Schemas []string
	// Publishes lists, per topic, the Avro full names of the schemas the
	// service publishes there. Run registers them before anything else,
	// checking that each is BACKWARD compatible with the subject's latest
	// version, so that an incompatible schema stops the deployment instead
	// of parking its messages later. Schemas not listed are registered by
	// the relay on first publish.
	Publishes map[string][]string

	// Relay tunes the outbox relay. Its Pool, Brokers, Registry, Logger and
	// Registerer are set by the client.
	Relay outbox.RelayConfig
	// Writer tunes the outbox writer. Its Codec, Notify and Logger are set
	// by the client.
	Writer outbox.WriterConfig

	// Logger gets what every part logs. Defaults to a logger that
	// discards everything.
	Logger *slog.Logger
	// Registerer gets every part's Prometheus metrics. Nil: none are
	// registered.
	Registerer prometheus.Registerer
	// TracerProvider makes every part's spans: the outbox writes and
	// publishes, and (through TracerProvider, see saga.TracerProviderRuntime)
	// the orchestrators', participants' and consumers' unless their own
	// config sets one. Relay.TracerProvider and Writer.TracerProvider, when
	// set, win. Defaults to the global provider (otel.GetTracerProvider),
	// a no-op until one is set: tracing off costs nothing.
	TracerProvider trace.TracerProvider
}

// Client owns a service's messaging runtime: the codec, the outbox writer,
// the relay and the schema registration, and runs the orchestrators,
// participants and consumers attached to it in the order that loses
// nothing. It implements saga.Runtime: pass it to saga.NewOrchestrator,
// saga.NewParticipant and saga.NewConsumer.
type Client struct {
	pool     *pgxpool.Pool
	cfg      Config
	log      *slog.Logger
	codec    *outbox.Codec
	writer   *outbox.Writer
	relay    *outbox.Relay // nil without Brokers
	registry srclient.ISchemaRegistryClient
	ready    chan struct{}

	mu      sync.Mutex
	started bool
	parts   []part
}

type part struct {
	name string
	run  func(context.Context) error
}

// NewClient checks cfg and builds the codec, the writer and, with Brokers,
// the relay. It does no I/O: Migrate creates the tables, Run connects.
func NewClient(pool *pgxpool.Pool, cfg Config) (*Client, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: a pool is required", ErrInvalidConfig)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Brokers) > 0 && cfg.Registry == nil && cfg.RegistryURL == "" {
		return nil, fmt.Errorf("%w: Config.RegistryURL (or Registry) is required with Brokers", ErrInvalidConfig)
	}
	codec, err := outbox.NewCodec(append(saga.Schemas(), cfg.Schemas...)...)
	if err != nil {
		return nil, fmt.Errorf("%w: Config.Schemas: %w", ErrInvalidConfig, err)
	}
	for topic, names := range cfg.Publishes {
		for _, n := range names {
			if _, ok := codec.Schema(n); !ok {
				return nil, fmt.Errorf("%w: Config.Publishes[%q]: %s is not in Config.Schemas", ErrInvalidConfig, topic, n)
			}
		}
	}
	c := &Client{pool: pool, cfg: cfg, log: cfg.Logger, codec: codec, ready: make(chan struct{})}
	if len(cfg.Brokers) > 0 {
		c.registry = cfg.Registry
		if c.registry == nil {
			c.registry = srclient.NewSchemaRegistryClient(cfg.RegistryURL)
		}
		rc := cfg.Relay
		rc.Pool, rc.Brokers, rc.Registry, rc.Logger, rc.Registerer = pool, cfg.Brokers, c.registry, cfg.Logger, cfg.Registerer
		if rc.TracerProvider == nil {
			rc.TracerProvider = cfg.TracerProvider
		}
		rc.Topics = slices.Clone(rc.Topics)
		for topic := range cfg.Publishes {
			rc.Topics = append(rc.Topics, topic)
		}
		slices.Sort(rc.Topics)
		if c.relay, err = outbox.NewRelay(rc); err != nil {
			return nil, err
		}
	}
	wc := cfg.Writer
	wc.Codec, wc.Logger = codec, cfg.Logger
	if wc.TracerProvider == nil {
		wc.TracerProvider = cfg.TracerProvider
	}
	if c.relay != nil {
		wc.Notify, wc.NotifyCommitted = c.relay.Notify, c.relay.NotifyCommitted
	}
	if c.writer, err = outbox.NewWriter(wc); err != nil {
		return nil, err
	}
	return c, nil
}

// Migrate creates or upgrades the outbox and saga tables in the client's
// database. It is safe to run from every instance at once. Tools such as
// goose or atlas can apply outbox.Migrations and saga.Migrations instead.
func (c *Client) Migrate(ctx context.Context) error {
	if err := outbox.Migrate(ctx, c.pool); err != nil {
		return err
	}
	return saga.Migrate(ctx, c.pool)
}

// Pool is the service's database.
func (c *Client) Pool() *pgxpool.Pool { return c.pool }

// Writer writes messages into the outbox in the caller's transaction.
func (c *Client) Writer() *outbox.Writer { return c.writer }

// Codec knows Config.Schemas and the saga envelopes.
func (c *Client) Codec() *outbox.Codec { return c.codec }

// Brokers are Config.Brokers.
func (c *Client) Brokers() []string { return slices.Clone(c.cfg.Brokers) }

// Registry is the Schema Registry client; nil without Brokers.
func (c *Client) Registry() srclient.ISchemaRegistryClient { return c.registry }

// Logger is Config.Logger.
func (c *Client) Logger() *slog.Logger { return c.log }

// Registerer is Config.Registerer.
func (c *Client) Registerer() prometheus.Registerer { return c.cfg.Registerer }

// TracerProvider is Config.TracerProvider, or the global provider when it
// is nil.
func (c *Client) TracerProvider() trace.TracerProvider {
	if c.cfg.TracerProvider == nil {
		return otel.GetTracerProvider()
	}
	return c.cfg.TracerProvider
}

// Relay is the outbox relay Run runs; nil without Brokers. Its Admin-like
// calls (Cleanup) and Notify are safe any time.
func (c *Client) Relay() *outbox.Relay { return c.relay }

// OutboxAdmin is the operator's view of the client's outbox.
func (c *Client) OutboxAdmin() *outbox.Admin { return outbox.NewAdmin(c.pool) }

// SagaAdmin is the operator's view of the sagas in the client's database:
// list, inspect, retry and abort them by ID, without their Go types.
func (c *Client) SagaAdmin() *saga.Admin { return saga.NewAdmin(c.pool) }

// Attach adds a long-running part: run must block until its ctx is done,
// finish what it has in flight and return nil. Orchestrators, participants
// and consumers attach themselves; attach your HTTP server too, so that it
// stops before the relay drains. Attach fails once Run has started.
func (c *Client) Attach(name string, run func(ctx context.Context) error) error {
	if name == "" || run == nil {
		return fmt.Errorf("%w: Attach needs a name and a run function", ErrInvalidConfig)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return fmt.Errorf("sagabox: cannot attach %q: the client is already running; attach every part before Run", name)
	}
	for _, p := range c.parts {
		if p.name == name {
			return fmt.Errorf("%w: a part named %q is attached already", ErrInvalidConfig, name)
		}
	}
	c.parts = append(c.parts, part{name: name, run: run})
	return nil
}

// Ready is closed once Run has stored and registered the schemas and
// started every part.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Run stores the codec's schemas for the relay, registers Config.Publishes,
// then runs the relay and every attached part until ctx is done or a part
// fails. It then stops the attached parts first and waits for them, and
// only then stops the relay, which publishes what they wrote last before it
// returns. It returns the first error of any part (nil on a clean stop).
// Run can be called once.
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return errors.New("sagabox: Client.Run called twice: a client runs once; build another for another run")
	}
	c.started = true
	parts := slices.Clone(c.parts)
	c.mu.Unlock()

	if err := c.writer.StoreSchemas(ctx, c.pool); err != nil {
		return err
	}
	if c.relay == nil {
		c.log.WarnContext(ctx, "sagabox: no Kafka brokers configured: nothing is relayed or consumed; messages wait in the outbox")
		return runParts(ctx, parts, nil, c.ready)
	}
	for topic, names := range c.cfg.Publishes {
		if err := outbox.RegisterSchemas(c.registry, c.codec, topic, names...); err != nil {
			return fmt.Errorf("sagabox: %w", err)
		}
	}
	return runParts(ctx, parts, []part{{name: "outbox.relay", run: c.relay.Run}}, c.ready)
}

// runParts runs front (what accepts work) and back (the relay) until ctx
// is done or a part fails, then stops front, waits for it, and only then
// stops back. ready, when given, is closed once every part is started.
func runParts(ctx context.Context, front, back []part, ready ...chan struct{}) error {
	frontCtx, stopFront := context.WithCancel(ctx)
	defer stopFront()
	backCtx, stopBack := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBack()

	var (
		mu       sync.Mutex
		firstErr error
	)
	fail := func(name string, err error) {
		if err == nil || errors.Is(err, context.Canceled) {
			return
		}
		mu.Lock()
		if firstErr == nil {
			firstErr = fmt.Errorf("sagabox: %s: %w", name, err)
		}
		mu.Unlock()
		stopFront() // one part failing stops the service
	}
	var backWG, frontWG sync.WaitGroup
	for _, p := range back {
		backWG.Go(func() { fail(p.name, p.run(backCtx)) })
	}
	for _, p := range front {
		frontWG.Go(func() { fail(p.name, p.run(frontCtx)) })
	}
	for _, r := range ready {
		close(r)
	}
	<-frontCtx.Done()
	frontWG.Wait()
	stopBack()
	backWG.Wait()
	return firstErr
}

var _ saga.TracerProviderRuntime = (*Client)(nil)
