package catalogservice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/catalogservice/adapters"
	"github.com/sagabox/sagabox/catalogservice/app"
	"github.com/sagabox/sagabox/catalogservice/ports"
	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/config"
	"github.com/sagabox/sagabox/internal/platform/dbpool"
	"github.com/sagabox/sagabox/internal/platform/httpx"
	"github.com/sagabox/sagabox/internal/platform/telemetry"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
	"go.opentelemetry.io/otel/trace"
)

// Name is the service's name in logs, metrics and migrations.
const Name = "catalogservice"

// Defaults.
const (
	DefaultAddr     = ":8002"
	DefaultIssuer   = "sagabox-users"
	DefaultAudience = "sagabox"
	DefaultMaxConns = 10
)

// Config configures the service. ConfigFromEnv reads it from the
// environment variable each field names.
type Config struct {
	// Addr is where the HTTP API listens (HTTP_ADDR). Defaults to ":8002".
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
	// Messaging says where Kafka and the Schema Registry are (KAFKA_BROKERS,
	// SCHEMA_REGISTRY_URL). Without brokers the service serves HTTP only:
	// no saga commands, no order events.
	Messaging config.Kafka
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
		Addr:        e.String("HTTP_ADDR", DefaultAddr),
		DatabaseURL: e.Required("DATABASE_URL"),
		MaxConns:    e.Int("DB_MAX_CONNS", DefaultMaxConns),
		JWKSURL:     e.Required("JWKS_URL"),
		Issuer:      e.String("JWT_ISSUER", DefaultIssuer),
		Audience:    e.String("JWT_AUDIENCE", DefaultAudience),
		Messaging:   config.KafkaFromEnv(e),
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: e.LogLevel("LOG_LEVEL", slog.LevelInfo)}))
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
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Pool == nil && c.DatabaseURL == "":
		return errors.New("catalogservice: Config.DatabaseURL (DATABASE_URL) is required")
	case c.Verifier == nil && c.JWKSURL == "":
		return errors.New("catalogservice: Config.JWKSURL (JWKS_URL) is required: userservice's /.well-known/jwks.json")
	}
	return nil
}

// Service is a running catalogservice.
type Service struct {
	cfg     Config
	log     *slog.Logger
	pool    *pgxpool.Pool
	ownPool bool
	app     *app.Application
	health  *httpx.Health
	handler http.Handler
	client  *sagabox.Client
	part    *saga.Participant
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
			return nil, fmt.Errorf("catalogservice: %w", err)
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
		return fmt.Errorf("catalogservice: %w", err)
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
	s.client, err = sagabox.NewClient(s.pool, sagabox.Config{
		Brokers: s.cfg.Messaging.Brokers, RegistryURL: s.cfg.Messaging.RegistryURL, Registry: s.cfg.Messaging.Registry,
		Schemas: schemas.All(), Logger: s.log, Registerer: metrics.Registry, TracerProvider: s.cfg.TracerProvider,
	})
	if err != nil {
		return fmt.Errorf("catalogservice: %w", err)
	}
	if err := s.client.Migrate(ctx); err != nil {
		return fmt.Errorf("catalogservice: %w", err)
	}
	repo := adapters.NewCatalog(s.pool)
	s.app = app.New(repo)

	// The saga participant: reserve_stock and release_stock commands arrive
	// on catalog.commands; replies leave through the outbox.
	s.part, err = saga.NewParticipant(s.client, saga.ParticipantConfig{Name: Name, CommandTopic: schemas.TopicCatalogCommands,
		Handlers: ports.SagaHandlers(s.app)})
	if err != nil {
		return err
	}

	// The read model's feed: order.events, deduplicated by the inbox.
	if _, err := saga.NewConsumer(s.client, saga.ConsumerConfig{Name: Name + "-order-view", Topic: schemas.TopicOrderEvents,
		Handler: ports.OrderEventsHandler(s.app, s.log),
		// Wakes GET /catalog/orders/{id}?min_version=&wait= once the view
		// it waits for is committed.
		AfterCommit: func(_ context.Context, e *saga.Event) { s.app.OrderViewCommitted(e.Key) }}); err != nil {
		return err
	}

	s.health = httpx.NewHealth()
	s.health.Add("postgres", repo.Ping)
	s.handler = telemetry.Handler(ports.NewHTTP(ports.HTTPConfig{App: s.app, Verifier: verifier, Health: s.health,
		Metrics: metrics, Logger: s.log}), Name, s.cfg.TracerProvider)
	return nil
}

// Handler is the HTTP API.
func (s *Service) Handler() http.Handler { return s.handler }

// App is the use cases, for the saga participant (ReserveStock,
// ReleaseStock), the order-event consumer (ApplyOrderEvent) and the demo.
func (s *Service) App() *app.Application { return s.app }

// Pool is the service's database.
func (s *Service) Pool() *pgxpool.Pool { return s.pool }

// Participant answers the order saga's stock commands. Run consumes them
// from Kafka; tests and the demo may call Process directly.
func (s *Service) Participant() *saga.Participant { return s.part }

// Client is the service's messaging runtime (codec, writer, relay, the
// participant and consumer attached to it).
func (s *Service) Client() *sagabox.Client { return s.client }

// Health lets the composition that adds consumers register their checks.
func (s *Service) Health() *httpx.Health { return s.health }

// Run serves the API on Config.Addr and, with Kafka configured, consumes
// saga commands and order events and relays the outbox, until ctx is done.
// Then it drains: /readyz fails, the server and the consumers finish what
// is in flight, and only then the relay stops, after publishing the replies
// they wrote.
func (s *Service) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("catalogservice: listen on %s: %w", s.cfg.Addr, err)
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
		s.log.Warn("catalogservice: KAFKA_BROKERS is not set: serving HTTP only, saga commands and order events are not consumed")
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
