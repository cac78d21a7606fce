package orderservice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/config"
	"github.com/sagabox/sagabox/internal/platform/dbpool"
	"github.com/sagabox/sagabox/internal/platform/httpx"
	"github.com/sagabox/sagabox/internal/platform/telemetry"
	"github.com/sagabox/sagabox/orderservice/adapters"
	"github.com/sagabox/sagabox/orderservice/app"
	"github.com/sagabox/sagabox/orderservice/ports"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
	"go.opentelemetry.io/otel/trace"
)

// Name is the service's name in logs, metrics and migrations.
const Name = "orderservice"

// Defaults.
const (
	DefaultAddr     = ":8003"
	DefaultIssuer   = "sagabox-users"
	DefaultAudience = "sagabox"
	DefaultMaxConns = 10
)

// Config configures the service. ConfigFromEnv reads it from the
// environment variable each field names.
type Config struct {
	// Addr is where the HTTP API listens (HTTP_ADDR). Defaults to ":8003".
	Addr string
	// DatabaseURL is the service's own database (DATABASE_URL). Required
	// unless Pool is set.
	DatabaseURL string
	// Pool, when set, is used instead of opening DatabaseURL (tests, the
	// demo). The service does not close it.
	Pool *pgxpool.Pool
	// MaxConns is the pool size (DB_MAX_CONNS). Defaults to 10.
	MaxConns int
	// JWKSURL is userservice's key set (JWKS_URL). Required unless
	// Verifier is set.
	JWKSURL string
	// Issuer and Audience are what tokens must carry (JWT_ISSUER,
	// JWT_AUDIENCE). Default to "sagabox-users" and "sagabox".
	Issuer, Audience string
	// Verifier, when set, checks tokens instead of one built from JWKSURL.
	Verifier auth.TokenVerifier
	// CatalogURL is catalogservice's HTTP API (CATALOG_URL), asked whether
	// it sells an order's SKUs before the order is stored: an unknown SKU
	// is a 422 that writes nothing. Empty: SKUs are not checked at the door
	// and an unknown SKU cancels the order through the saga.
	CatalogURL string
	// CatalogTimeout bounds that check for one order (CATALOG_TIMEOUT): a
	// catalog slower than this makes the order a 503 catalog_unavailable.
	// Defaults to adapters.CatalogTimeout (3s).
	CatalogTimeout time.Duration
	// Catalog, when set, is used instead of a client of CatalogURL.
	Catalog app.Catalog
	// Messaging says where Kafka and the Schema Registry are (KAFKA_BROKERS,
	// SCHEMA_REGISTRY_URL). Without brokers the service serves HTTP only:
	// orders are stored PENDING with their saga's first command, which waits
	// in the outbox until a relay runs.
	Messaging config.Kafka
	// MaxPendingOrders is how many PENDING orders a customer may have
	// (MAX_PENDING_ORDERS); one more is a 429 with Retry-After. Defaults to
	// app.DefaultMaxPendingOrders (10).
	MaxPendingOrders int
	// Saga tunes the order saga's orchestrator (poll interval, retention...).
	// ReplyTopic is set by the service.
	Saga saga.Config
	// Steps times the saga's commands: each attempt's timeout
	// (SAGA_STEP_TIMEOUT, default saga.DefaultTimeout, 30s), the attempts
	// before a compensatable step compensates or the pivot keeps asking
	// (SAGA_STEP_ATTEMPTS, default saga.DefaultMaxAttempts, 3) and the cap
	// of the backoff between them (SAGA_STEP_MAX_BACKOFF, default
	// saga.DefaultMaxBackoff, 30s). Tests and the crash test shorten or
	// lengthen them; production keeps the defaults. ConfigFromEnv also
	// reads Saga.PollInterval from SAGA_POLL_INTERVAL (default
	// saga.DefaultPollInterval, 500ms).
	Steps app.SagaTuning
	// Logger defaults to a logger that discards everything. ConfigFromEnv
	// sets a JSON logger at LOG_LEVEL (default info).
	Logger *slog.Logger
	// TracerProvider traces the HTTP API and clients (otelhttp) and the
	// service's messaging (sagabox.Config.TracerProvider). Nil: the global
	// provider, a no-op unless one is set. Run (the command) builds one
	// from the OTEL_* environment variables when they turn tracing on
	// (see internal/platform/telemetry), and none otherwise.
	TracerProvider trace.TracerProvider
}

// ConfigFromEnv reads Config from the environment, reporting every bad
// variable at once.
func ConfigFromEnv() (Config, error) {
	e := config.FromOS()
	cfg := Config{
		Addr:             e.String("HTTP_ADDR", DefaultAddr),
		DatabaseURL:      e.Required("DATABASE_URL"),
		MaxConns:         e.Int("DB_MAX_CONNS", DefaultMaxConns),
		JWKSURL:          e.Required("JWKS_URL"),
		Issuer:           e.String("JWT_ISSUER", DefaultIssuer),
		Audience:         e.String("JWT_AUDIENCE", DefaultAudience),
		CatalogURL:       e.String("CATALOG_URL", ""),
		MaxPendingOrders: e.Int("MAX_PENDING_ORDERS", app.DefaultMaxPendingOrders),
		Messaging:        config.KafkaFromEnv(e),
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: e.LogLevel("LOG_LEVEL", slog.LevelInfo)}))
	cfg.CatalogTimeout = e.Duration("CATALOG_TIMEOUT", adapters.CatalogTimeout)
	cfg.Saga.PollInterval = e.Duration("SAGA_POLL_INTERVAL", saga.DefaultPollInterval)
	cfg.Steps.Timeout = e.Duration("SAGA_STEP_TIMEOUT", saga.DefaultTimeout)
	cfg.Steps.Retry.MaxAttempts = e.Int("SAGA_STEP_ATTEMPTS", saga.DefaultMaxAttempts)
	cfg.Steps.Retry.MaxBackoff = e.Duration("SAGA_STEP_MAX_BACKOFF", saga.DefaultMaxBackoff)
	return cfg, e.Err()
}

// WithDefaults returns a copy of c with every unset field defaulted.
func (c Config) WithDefaults() Config {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.Issuer == "" {
		c.Issuer = DefaultIssuer
	}
	if c.Audience == "" {
		c.Audience = DefaultAudience
	}
	if c.MaxPendingOrders <= 0 {
		c.MaxPendingOrders = app.DefaultMaxPendingOrders
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Pool == nil && c.DatabaseURL == "":
		return errors.New("orderservice: Config.DatabaseURL (DATABASE_URL) is required")
	case c.Verifier == nil && c.JWKSURL == "":
		return errors.New("orderservice: Config.JWKSURL (JWKS_URL) is required: userservice's /.well-known/jwks.json")
	case c.CatalogTimeout < 0:
		return errors.New("orderservice: Config.CatalogTimeout (CATALOG_TIMEOUT) is negative")
	case c.Steps.Timeout < 0 || c.Steps.Retry.MaxAttempts < 0 || c.Steps.Retry.MaxBackoff < 0:
		return errors.New("orderservice: Config.Steps (SAGA_STEP_TIMEOUT, SAGA_STEP_ATTEMPTS, SAGA_STEP_MAX_BACKOFF) must not be negative")
	case c.CatalogURL != "" && !strings.HasPrefix(c.CatalogURL, "http://") && !strings.HasPrefix(c.CatalogURL, "https://"):
		return fmt.Errorf("orderservice: Config.CatalogURL (CATALOG_URL) %q must be an http:// or https:// URL", c.CatalogURL)
	}
	return nil
}

// ReplyTopic is where the participants answer the order saga's commands.
const ReplyTopic = "order.saga.replies"

// Service is a running orderservice.
type Service struct {
	cfg     Config
	log     *slog.Logger
	pool    *pgxpool.Pool
	ownPool bool
	app     *app.Application
	health  *httpx.Health
	handler http.Handler
	client  *sagabox.Client
	orch    *saga.Orchestrator[app.SagaData]
}

// New connects to the database, applies the migrations and builds the HTTP
// API. Close releases what it opened.
func New(ctx context.Context, cfg Config) (*Service, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: cfg.Logger.With("service", Name), pool: cfg.Pool}
	if s.pool == nil {
		pool, err := dbpool.Open(ctx, cfg.DatabaseURL, cfg.MaxConns)
		if err != nil {
			return nil, fmt.Errorf("orderservice: %w", err)
		}
		s.pool, s.ownPool = pool, true
	}
	if err := s.init(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Service) init(ctx context.Context) error {
	if err := adapters.Migrate(ctx, s.pool); err != nil {
		return fmt.Errorf("orderservice: %w", err)
	}
	verifier := s.cfg.Verifier
	if verifier == nil {
		v, err := auth.NewVerifier(auth.VerifierConfig{Keys: auth.FromURL(s.cfg.JWKSURL, telemetry.Client(&http.Client{Timeout: auth.JWKSTimeout}, s.cfg.TracerProvider)),
			Issuer: s.cfg.Issuer, Audience: s.cfg.Audience})
		if err != nil {
			return err
		}
		verifier = v
	}
	metrics := httpx.NewMetrics(Name)
	var err error
	// The client owns the service's messaging. Run refuses to start with an
	// order event schema the registry's consumers could not read (BACKWARD
	// compatibility), rather than park events later.
	s.client, err = sagabox.NewClient(s.pool, sagabox.Config{
		Brokers: s.cfg.Messaging.Brokers, RegistryURL: s.cfg.Messaging.RegistryURL, Registry: s.cfg.Messaging.Registry,
		Schemas: schemas.All(),
		Publishes: map[string][]string{schemas.TopicOrderEvents: {
			schemas.NameOrderCreated, schemas.NameOrderApproved, schemas.NameOrderCancelled}},
		Logger: s.log, Registerer: metrics.Registry, TracerProvider: s.cfg.TracerProvider,
	})
	if err != nil {
		return fmt.Errorf("orderservice: %w", err)
	}
	if err := s.client.Migrate(ctx); err != nil {
		return fmt.Errorf("orderservice: %w", err)
	}
	repo := adapters.NewOrders(s.pool, s.client.Writer())

	// The order saga's orchestrator: Start runs inside PlaceOrder's
	// transaction; Run consumes the participants' replies on ReplyTopic and
	// fires the timeouts and retries stored in the database.
	sc := s.cfg.Saga
	sc.ReplyTopic = ReplyTopic
	s.orch, err = saga.NewOrchestrator(s.client, sc, app.OrderSagaWith(repo, s.cfg.Steps))
	if err != nil {
		return fmt.Errorf("orderservice: %w", err)
	}

	catalog := s.cfg.Catalog
	if catalog == nil && s.cfg.CatalogURL != "" {
		timeout := s.cfg.CatalogTimeout
		if timeout <= 0 {
			timeout = adapters.CatalogTimeout
		}
		catalog = adapters.NewCatalogWithTimeout(s.cfg.CatalogURL, timeout, telemetry.Client(&http.Client{Timeout: timeout}, s.cfg.TracerProvider))
	}
	if catalog == nil {
		s.log.Warn("orderservice: CATALOG_URL is not set: SKUs are not checked when an order is placed; the saga cancels orders for unknown SKUs")
	}
	// Read-your-writes: POST /orders with Prefer: wait and GET /orders/{id}
	// ?wait= wait for the saga's end through one LISTEN per process.
	waiter, err := saga.NewWaiter(s.client)
	if err != nil {
		return fmt.Errorf("orderservice: %w", err)
	}
	s.app = app.New(repo, catalog, s.orch, app.Options{MaxPendingOrders: s.cfg.MaxPendingOrders, Waiter: waiter})

	s.health = httpx.NewHealth()
	s.health.Add("postgres", repo.Ping)
	s.handler = telemetry.Handler(ports.NewHTTP(ports.HTTPConfig{App: s.app, Verifier: verifier, Health: s.health,
		Metrics: metrics, Logger: s.log}), Name, s.cfg.TracerProvider)
	return nil
}

// Handler is the HTTP API.
func (s *Service) Handler() http.Handler { return s.handler }

// App is the use cases, for the demo and tests.
func (s *Service) App() *app.Application { return s.app }

// Pool is the service's database.
func (s *Service) Pool() *pgxpool.Pool { return s.pool }

// Orchestrator runs the order sagas. Run consumes their replies; its
// Retry and Abort are the operator's levers on a failed or stuck saga.
func (s *Service) Orchestrator() *saga.Orchestrator[app.SagaData] { return s.orch }

// Client is the service's messaging runtime (codec, writer, relay, the
// orchestrator attached to it).
func (s *Service) Client() *sagabox.Client { return s.client }

// Health lets the composition that adds consumers register their checks.
func (s *Service) Health() *httpx.Health { return s.health }

// Run serves the API on Config.Addr and, with Kafka configured, runs the
// order sagas (consuming their replies, firing their timeouts) and relays
// the outbox, until ctx is done. Then it drains: /readyz fails, the server
// and the orchestrator finish what is in flight, and only then the relay
// stops, after publishing the commands and events they wrote.
func (s *Service) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("orderservice: listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ctx, l)
}

// Serve is Run on a listener of the caller's.
func (s *Service) Serve(ctx context.Context, l net.Listener) error {
	if err := s.client.Attach("http", func(ctx context.Context) error {
		go func() { <-ctx.Done(); s.health.Drain() }()
		return httpx.Serve(ctx, l, s.handler, s.log)
	}); err != nil {
		return err
	}
	if !s.cfg.Messaging.Enabled() {
		s.log.Warn("orderservice: KAFKA_BROKERS is not set: serving HTTP only: orders stay PENDING, their commands wait in the outbox")
	}
	return s.client.Run(ctx)
}

// Close closes the database pool when the service opened it.
func (s *Service) Close() {
	if s.ownPool && s.pool != nil {
		s.pool.Close()
	}
}

// Run builds the service from cfg, runs it until ctx is done and closes it.
func Run(ctx context.Context, cfg Config) error {
	tp, flush, err := telemetry.ForService(ctx, Name, cfg.TracerProvider)
	if err != nil {
		return err
	}
	defer flush()
	cfg.TracerProvider = tp
	s, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Run(ctx)
}
