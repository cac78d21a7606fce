package userservice

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/config"
	"github.com/sagabox/sagabox/internal/platform/dbpool"
	"github.com/sagabox/sagabox/internal/platform/httpx"
	"github.com/sagabox/sagabox/internal/platform/ratelimit"
	"github.com/sagabox/sagabox/internal/platform/telemetry"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
	"github.com/sagabox/sagabox/userservice/adapters"
	"github.com/sagabox/sagabox/userservice/app"
	"github.com/sagabox/sagabox/userservice/domain"
	"github.com/sagabox/sagabox/userservice/ports"
	"go.opentelemetry.io/otel/trace"
)

// Name is the service's name in logs, metrics and migrations.
const Name = "userservice"

// Defaults.
const (
	DefaultAddr         = ":8001"
	DefaultIssuer       = "sagabox-users"
	DefaultAudience     = "sagabox"
	DefaultLoginBurst   = 5
	DefaultLoginEvery   = 20 * time.Second
	DefaultSignupBurst  = 5
	DefaultSignupEvery  = time.Minute
	DefaultClientBurst  = 50
	DefaultClientEvery  = time.Second
	DefaultMaxConns     = 10
	DefaultStartingCred = domain.StartingCreditCents
)

// Config configures the service. ConfigFromEnv reads it from the
// environment variable each field names.
type Config struct {
	// Addr is where the HTTP API listens (HTTP_ADDR). Defaults to ":8001".
	Addr string
	// DatabaseURL is the service's own database (DATABASE_URL). Required
	// unless Pool is set.
	DatabaseURL string
	// Pool, when set, is used instead of opening DatabaseURL (tests, the
	// demo). The service does not close it.
	Pool *pgxpool.Pool
	// MaxConns is the pool size (DB_MAX_CONNS). Defaults to 10.
	MaxConns int
	// SigningKey signs access tokens (JWT_SIGNING_KEY: PKCS#8 PEM or base64
	// seed; or JWT_SIGNING_KEY_FILE). Defaults to a key generated at start-up, which is fine for a
	// demo and wrong for anything with more than one instance or restarts.
	SigningKey ed25519.PrivateKey
	// Issuer and Audience are the tokens' iss and aud (JWT_ISSUER,
	// JWT_AUDIENCE). Default to "sagabox-users" and "sagabox".
	Issuer, Audience string
	// TokenTTL is how long tokens live (JWT_TTL). Defaults to 15m.
	TokenTTL time.Duration
	// StartingCreditCents is new users' credit (STARTING_CREDIT_CENTS).
	// Defaults to 10000 (100.00).
	StartingCreditCents int64
	// AdminEmail and AdminPassword, when set, make sure an admin account
	// exists at start-up (ADMIN_EMAIL, ADMIN_PASSWORD or ADMIN_PASSWORD_FILE).
	AdminEmail, AdminPassword string
	// LoginBurst attempts per email and client address, then one per
	// LoginEvery (LOGIN_BURST, LOGIN_EVERY). Default to 5 and 20s.
	LoginBurst int
	LoginEvery time.Duration
	// SignupBurst sign-ups per client address, then one per SignupEvery
	// (SIGNUP_BURST, SIGNUP_EVERY). Default to 5 and 1m: every account
	// comes with starting credit, so one client must not mint them by the
	// hundred. Behind a proxy every client has the proxy's address: limit
	// at the edge, or raise these.
	SignupBurst int
	SignupEvery time.Duration
	// Messaging says where Kafka and the Schema Registry are (KAFKA_BROKERS,
	// SCHEMA_REGISTRY_URL). Without brokers the service serves HTTP only
	// and does not consume saga commands.
	Messaging config.Kafka
	// PasswordParams are the argon2id costs. Defaults to
	// adapters.DefaultArgon2idParams; tests lower them.
	PasswordParams adapters.Argon2idParams
	// Logger defaults to a logger that discards everything. ConfigFromEnv
	// sets a JSON logger at LOG_LEVEL (default info).
	Logger *slog.Logger
	// DebitFault, when set, is asked before each debit_credit command: an
	// error it returns is the participant's answer, a transient failure
	// with nothing debited, which the order saga retries and, at its pivot,
	// ends failed for an operator once the retries run out. For failure
	// drills and the demo (a payment processor that is down); nil in
	// production.
	DebitFault ports.DebitFault

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
		Addr:                e.String("HTTP_ADDR", DefaultAddr),
		DatabaseURL:         e.Required("DATABASE_URL"),
		MaxConns:            e.Int("DB_MAX_CONNS", DefaultMaxConns),
		Issuer:              e.String("JWT_ISSUER", DefaultIssuer),
		Audience:            e.String("JWT_AUDIENCE", DefaultAudience),
		TokenTTL:            e.Duration("JWT_TTL", auth.DefaultTokenTTL),
		StartingCreditCents: e.Int64("STARTING_CREDIT_CENTS", DefaultStartingCred),
		AdminEmail:          e.String("ADMIN_EMAIL", ""),
		AdminPassword:       e.Secret("ADMIN_PASSWORD", ""),
		LoginBurst:          e.Int("LOGIN_BURST", DefaultLoginBurst),
		LoginEvery:          e.Duration("LOGIN_EVERY", DefaultLoginEvery),
		SignupBurst:         e.Int("SIGNUP_BURST", DefaultSignupBurst),
		SignupEvery:         e.Duration("SIGNUP_EVERY", DefaultSignupEvery),
		Messaging:           config.KafkaFromEnv(e),
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: e.LogLevel("LOG_LEVEL", slog.LevelInfo)}))
	if k := e.Secret("JWT_SIGNING_KEY", ""); k != "" {
		key, err := auth.ParsePrivateKey(k)
		if err != nil {
			return cfg, fmt.Errorf("config: JWT_SIGNING_KEY: %w", err)
		}
		cfg.SigningKey = key
	}
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
	if c.TokenTTL <= 0 {
		c.TokenTTL = auth.DefaultTokenTTL
	}
	if c.StartingCreditCents == 0 {
		c.StartingCreditCents = DefaultStartingCred
	}
	if c.LoginBurst <= 0 {
		c.LoginBurst = DefaultLoginBurst
	}
	if c.LoginEvery <= 0 {
		c.LoginEvery = DefaultLoginEvery
	}
	if c.SignupBurst <= 0 {
		c.SignupBurst = DefaultSignupBurst
	}
	if c.SignupEvery <= 0 {
		c.SignupEvery = DefaultSignupEvery
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Pool == nil && c.DatabaseURL == "":
		return errors.New("userservice: Config.DatabaseURL (DATABASE_URL) is required")
	case c.StartingCreditCents < 0:
		return errors.New("userservice: Config.StartingCreditCents must not be negative")
	case (c.AdminEmail == "") != (c.AdminPassword == ""):
		return errors.New("userservice: set both Config.AdminEmail and AdminPassword (ADMIN_EMAIL, ADMIN_PASSWORD) or neither")
	}
	return nil
}

// Service is a running userservice.
type Service struct {
	cfg     Config
	log     *slog.Logger
	pool    *pgxpool.Pool
	ownPool bool
	app     *app.Application
	issuer  *auth.Issuer
	health  *httpx.Health
	handler http.Handler
	client  *sagabox.Client
	part    *saga.Participant
}

// New connects to the database, applies the migrations, makes sure the
// admin exists and builds the HTTP API. Close releases what it opened.
func New(ctx context.Context, cfg Config) (*Service, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("service", Name)
	s := &Service{cfg: cfg, log: log, pool: cfg.Pool}
	if s.pool == nil {
		pool, err := dbpool.Open(ctx, cfg.DatabaseURL, cfg.MaxConns)
		if err != nil {
			return nil, fmt.Errorf("userservice: %w", err)
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
	cfg := s.cfg
	if err := adapters.Migrate(ctx, s.pool); err != nil {
		return fmt.Errorf("userservice: %w", err)
	}
	key := cfg.SigningKey
	if key == nil {
		s.log.Warn("userservice: JWT_SIGNING_KEY is not set: signing with a key generated now; tokens die with this process")
		key = auth.GenerateKey()
	}
	var err error
	s.issuer, err = auth.NewIssuer(auth.IssuerConfig{Key: key, Issuer: cfg.Issuer, Audience: cfg.Audience, TTL: cfg.TokenTTL})
	if err != nil {
		return err
	}
	// The service checks its own tokens through the same code path as the
	// others, reading its key set directly instead of over HTTP.
	jwks := s.issuer.JWKS()
	verifier, err := auth.NewVerifier(auth.VerifierConfig{
		Keys:   func(context.Context) ([]byte, error) { return jwks, nil },
		Issuer: cfg.Issuer, Audience: cfg.Audience,
	})
	if err != nil {
		return err
	}
	metrics := httpx.NewMetrics(Name)
	s.client, err = sagabox.NewClient(s.pool, sagabox.Config{
		Brokers: cfg.Messaging.Brokers, RegistryURL: cfg.Messaging.RegistryURL, Registry: cfg.Messaging.Registry,
		Schemas: schemas.All(), Logger: s.log, Registerer: metrics.Registry, TracerProvider: s.cfg.TracerProvider,
	})
	if err != nil {
		return fmt.Errorf("userservice: %w", err)
	}
	if err := s.client.Migrate(ctx); err != nil {
		return fmt.Errorf("userservice: %w", err)
	}
	repo := adapters.NewUsers(s.pool)
	s.app, err = app.New(ctx, repo, adapters.NewArgon2id(cfg.PasswordParams), s.issuer, cfg.StartingCreditCents)
	if err != nil {
		return err
	}
	if cfg.AdminEmail != "" {
		u, err := s.app.BootstrapAdmin(ctx, cfg.AdminEmail, cfg.AdminPassword)
		if err != nil {
			return fmt.Errorf("userservice: %w", err)
		}
		s.log.Info("userservice: admin account ready", "user_id", u.ID, "email", u.Email)
	}
	// The saga participant: debit_credit and refund_credit commands arrive
	// on user.commands; replies leave through the outbox.
	s.part, err = saga.NewParticipant(s.client, saga.ParticipantConfig{Name: Name, CommandTopic: schemas.TopicUserCommands,
		Handlers: ports.SagaHandlers(s.app, s.cfg.DebitFault)})
	if err != nil {
		return err
	}
	s.health = httpx.NewHealth()
	s.health.Add("postgres", repo.Ping)
	s.handler = telemetry.Handler(ports.NewHTTP(ports.HTTPConfig{
		App: s.app, Verifier: verifier, JWKS: jwks, Health: s.health, Metrics: metrics, Logger: s.log,
		LoginPerAccount: ratelimit.New(cfg.LoginEvery, cfg.LoginBurst),
		LoginPerClient:  ratelimit.New(DefaultClientEvery, DefaultClientBurst),
		SignupPerClient: ratelimit.New(cfg.SignupEvery, cfg.SignupBurst),
	}), Name, s.cfg.TracerProvider)
	return nil
}

// Handler is the HTTP API.
func (s *Service) Handler() http.Handler { return s.handler }

// App is the use cases, for the saga participant (DebitCredit,
// RefundCredit) and the demo.
func (s *Service) App() *app.Application { return s.app }

// Pool is the service's database.
func (s *Service) Pool() *pgxpool.Pool { return s.pool }

// Participant answers the order saga's credit commands. Run consumes them
// from Kafka; tests and the demo may call Process directly.
func (s *Service) Participant() *saga.Participant { return s.part }

// Client is the service's messaging runtime (codec, writer, relay, the
// participant attached to it).
func (s *Service) Client() *sagabox.Client { return s.client }

// Health lets the composition that adds consumers register their checks.
func (s *Service) Health() *httpx.Health { return s.health }

// Issuer signs the service's tokens; its JWKS is served at
// /.well-known/jwks.json.
func (s *Service) Issuer() *auth.Issuer { return s.issuer }

// Run serves the API on Config.Addr and, with Kafka configured, consumes
// saga commands and relays the outbox, until ctx is done. Then it drains:
// /readyz fails, the server finishes the requests in flight, the consumer
// finishes the command in flight, and only then the relay stops, after
// publishing the replies they wrote.
func (s *Service) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("userservice: listen on %s: %w", s.cfg.Addr, err)
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
		s.log.Warn("userservice: KAFKA_BROKERS is not set: serving HTTP only, saga commands are not consumed")
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
