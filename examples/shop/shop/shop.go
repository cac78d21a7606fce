// Package shop runs the whole shop in one process: userservice,
// catalogservice and orderservice with their relays, saga participants and
// orchestrator, an in-process Kafka (kfake) and Schema Registry (srfake)
// that outside tools can connect to, against a real Postgres. It is what
// `go run ./examples/shop` starts, what cmd/shopbench measures and what the
// end-to-end test drives; docker-compose.yml runs the same services on
// real Kafka.
package shop

import (
	"go.opentelemetry.io/otel/trace"

	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/sagabox/sagabox/internal/platform/telemetry"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox/catalogservice"
	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/internal/platform/config"
	"github.com/sagabox/sagabox/orderservice"
	orderapp "github.com/sagabox/sagabox/orderservice/app"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
	"github.com/sagabox/sagabox/userservice"
	useradapters "github.com/sagabox/sagabox/userservice/adapters"
	"github.com/sagabox/sagabox/userservice/app"
)

// Defaults.
const (
	// DefaultDatabaseURL is the local Postgres server of the README.
	DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	// DefaultDatabasePrefix names the demo's databases: sagabox_users,
	// sagabox_catalog, sagabox_orders.
	DefaultDatabasePrefix = "sagabox"
	// DefaultAdminEmail is the generated admin's email.
	DefaultAdminEmail = "admin@sagabox.local"
	// DefaultPartitions is how many partitions each topic gets.
	DefaultPartitions = 3
	// DefaultSignupBurst is the demo's sign-ups per client address.
	DefaultSignupBurst = 10_000
	// DefaultSagaPollInterval is how often the orchestrator looks for due
	// timeouts and retries.
	DefaultSagaPollInterval = 200 * time.Millisecond
)

// Config configures the shop.
type Config struct {
	// DatabaseURL is a Postgres server on which the shop may create its
	// databases (DATABASE_URL); the database in its path is only used to
	// connect. Defaults to DefaultDatabaseURL.
	DatabaseURL string
	// Fresh gives each run its own databases (random names), dropped by
	// Close: for tests and benchmarks. Otherwise the shop uses
	// sagabox_users, sagabox_catalog and sagabox_orders, creating them when
	// missing and keeping them.
	Fresh bool
	// Ports defaults to all zero: random ports. The demo uses DefaultPorts,
	// or what its flags and environment say (PortsFromEnv).
	Ports Ports
	// AdminEmail and AdminPassword make sure this admin exists (ADMIN_EMAIL,
	// ADMIN_PASSWORD). Both or neither; neither: an admin with a generated
	// password.
	AdminEmail, AdminPassword string
	// PasswordParams are userservice's argon2id costs. Default to
	// userservice's; tests and benchmarks lower them.
	PasswordParams useradapters.Argon2idParams
	// Partitions per topic. Defaults to DefaultPartitions.
	Partitions int
	// MaxConns is each service's pool size. Defaults to the services'
	// default (10).
	MaxConns int
	// SignupBurst is how many sign-ups userservice accepts per client
	// address before one per minute (SIGNUP_BURST). Defaults to
	// DefaultSignupBurst: every customer of the demo, the scenario and the
	// benchmark signs up from 127.0.0.1. A deployment keeps userservice's
	// default (5).
	SignupBurst int
	// MaxPendingOrders caps each customer's PENDING orders
	// (MAX_PENDING_ORDERS). Defaults to orderservice's (10); the open-loop
	// benchmark raises it.
	MaxPendingOrders int
	// SagaPollInterval defaults to DefaultSagaPollInterval.
	SagaPollInterval time.Duration
	// SagaStepTimeout is how long one attempt of the order saga's commands
	// waits for its reply (orderservice's Config.Steps.Timeout). Defaults
	// to the saga package's (30s). Tests on a busy machine lengthen it.
	SagaStepTimeout time.Duration
	// CatalogTimeout bounds orderservice's SKU check of an order
	// (orderservice's Config.CatalogTimeout). Defaults to its default (3s).
	CatalogTimeout time.Duration
	// Logger receives the services' logs. Defaults to discarding them.
	Logger *slog.Logger
	// TracerProvider, when set, traces the three services. Nil: Start
	// builds one SDK per service (service.name userservice, catalogservice,
	// orderservice) from the OTEL_* environment variables when they turn
	// tracing on (OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 to a
	// Jaeger or a collector, say), and none otherwise: see
	// internal/platform/telemetry. Close flushes them.
	TracerProvider trace.TracerProvider
}

// ConfigFromEnv reads DATABASE_URL, ADMIN_EMAIL and ADMIN_PASSWORD.
func ConfigFromEnv() Config {
	return Config{DatabaseURL: os.Getenv("DATABASE_URL"), AdminEmail: os.Getenv("ADMIN_EMAIL"),
		AdminPassword: os.Getenv("ADMIN_PASSWORD")}
}

// WithDefaults returns a copy of c with every unset field defaulted.
func (c Config) WithDefaults() Config {
	if c.DatabaseURL == "" {
		c.DatabaseURL = DefaultDatabaseURL
	}
	if c.Partitions <= 0 {
		c.Partitions = DefaultPartitions
	}
	if c.SagaPollInterval <= 0 {
		c.SagaPollInterval = DefaultSagaPollInterval
	}
	if c.SignupBurst <= 0 {
		c.SignupBurst = DefaultSignupBurst
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	if (c.AdminEmail == "") != (c.AdminPassword == "") {
		return errors.New("shop: set both ADMIN_EMAIL and ADMIN_PASSWORD, or neither to have an admin generated")
	}
	return nil
}

// Admin is the admin account the shop made sure of.
type Admin struct {
	Email, Password string
	// Generated: the password was made up at start-up (no ADMIN_PASSWORD).
	Generated bool
	// Token is a fresh admin token, for seeding and curl.
	Token string
}

// Shop is the running shop.
type Shop struct {
	// Base URLs of the three services ("http://127.0.0.1:8001").
	UsersURL, CatalogURL, OrdersURL string
	// Brokers are the in-process Kafka's addresses; RegistryURL is the
	// Schema Registry's.
	Brokers     []string
	RegistryURL string
	// Databases are the three databases' names (users, catalog, orders).
	Databases []string
	// OrdersDatabaseURL is the order service's database: the sagas and
	// outbox the console shows, what sagabox -database-url takes.
	OrdersDatabaseURL string
	// ConsoleURL is the operator console over the order service's
	// database ("http://127.0.0.1:8090/"), on loopback, without a token.
	ConsoleURL string
	Admin      Admin

	paymentsDown atomic.Bool

	cfg      Config
	stop     context.CancelFunc
	done     chan struct{}
	waitOnce sync.Once
	err      error
	cleanup  []func() error // run in reverse order by Wait
}

// Start starts the shop and returns once every service is serving and the
// demo products are in the catalog. The shop runs until ctx is done, Close
// is called or a service fails; Wait returns then, after draining.
func Start(ctx context.Context, cfg Config) (_ *Shop, err error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := cfg.Ports.checkPorts(); err != nil {
		return nil, err
	}
	s := &Shop{cfg: cfg, done: make(chan struct{})}
	defer func() {
		if err != nil {
			_ = s.release()
		}
	}()

	// Databases.
	prefix := DefaultDatabasePrefix
	if cfg.Fresh {
		prefix = "sagabox_shop_" + randomHex(4)
	}
	s.Databases = []string{prefix + "_users", prefix + "_catalog", prefix + "_orders"}
	if err := createDatabases(ctx, cfg.DatabaseURL, s.Databases); err != nil {
		return nil, err
	}
	if cfg.Fresh {
		s.cleanup = append(s.cleanup, func() error { return dropDatabases(cfg.DatabaseURL, s.Databases) })
	}
	var dbURLs [3]string
	for i, n := range s.Databases {
		if dbURLs[i], err = databaseURL(cfg.DatabaseURL, n); err != nil {
			return nil, err
		}
	}

	// Kafka and the Schema Registry, on fixed ports so outside tools can
	// connect.
	kopts := []kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(cfg.Partitions),
		kfake.SeedTopics(int32(cfg.Partitions), schemas.TopicUserCommands, schemas.TopicCatalogCommands,
			schemas.TopicOrderEvents, orderservice.ReplyTopic)}
	if cfg.Ports.Kafka != 0 {
		kopts = append(kopts, kfake.Ports(cfg.Ports.Kafka))
	}
	cluster, err := kfake.NewCluster(kopts...)
	if err != nil && cfg.Ports.Kafka != 0 {
		return nil, cfg.Ports.portError(&cfg.Ports.Kafka, err)
	}
	if err != nil {
		return nil, fmt.Errorf("shop: start Kafka (kfake): %w", err)
	}
	s.cleanup = append(s.cleanup, func() error { cluster.Close(); return nil })
	s.Brokers = cluster.ListenAddrs()

	rl, err := listen(&cfg.Ports, &cfg.Ports.Registry)
	if err != nil {
		return nil, err
	}
	registry := &http.Server{Handler: srfake.NewRegistry().Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = registry.Serve(rl) }()
	s.cleanup = append(s.cleanup, func() error { return registry.Close() })
	s.RegistryURL = "http://" + rl.Addr().String()
	msg := config.Kafka{Brokers: s.Brokers, RegistryURL: s.RegistryURL}

	// The services. Listening first gives the URLs they point at each other
	// with, and fails early on a taken port.
	var ls [3]net.Listener
	for i, port := range []*int{&cfg.Ports.Users, &cfg.Ports.Catalog, &cfg.Ports.Orders} {
		if ls[i], err = listen(&cfg.Ports, port); err != nil {
			return nil, err
		}
		l := ls[i]
		s.cleanup = append(s.cleanup, func() error { _ = l.Close(); return nil }) // already closed once served
	}
	ul, cl, ol := ls[0], ls[1], ls[2]

	// Tracing, one SDK per service so that each has its service.name.
	tps := map[string]trace.TracerProvider{}
	for _, name := range []string{userservice.Name, catalogservice.Name, orderservice.Name} {
		tps[name] = cfg.TracerProvider
		if cfg.TracerProvider != nil {
			continue
		}
		t, err := telemetry.FromEnv(ctx, name, true)
		if err != nil {
			return nil, fmt.Errorf("shop: %w", err)
		}
		s.cleanup = append(s.cleanup, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // an unreachable collector must not hang Close
			defer cancel()
			return t.Shutdown(ctx)
		})
		tps[name] = t.Provider
	}
	s.UsersURL, s.CatalogURL, s.OrdersURL = "http://"+ul.Addr().String(), "http://"+cl.Addr().String(), "http://"+ol.Addr().String()
	jwks := s.UsersURL + "/.well-known/jwks.json"

	users, err := userservice.New(ctx, userservice.Config{DatabaseURL: dbURLs[0], MaxConns: cfg.MaxConns,
		Messaging: msg, PasswordParams: cfg.PasswordParams, SignupBurst: cfg.SignupBurst, Logger: cfg.Logger, TracerProvider: tps[userservice.Name],
		DebitFault: func(context.Context, string, string, int64) error {
			if s.paymentsDown.Load() {
				return errors.New("payment processor unreachable (the demo switched it off)")
			}
			return nil
		}})
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, func() error { users.Close(); return nil })
	catalog, err := catalogservice.New(ctx, catalogservice.Config{DatabaseURL: dbURLs[1], MaxConns: cfg.MaxConns,
		JWKSURL: jwks, Messaging: msg, Logger: cfg.Logger, TracerProvider: tps[catalogservice.Name]})
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, func() error { catalog.Close(); return nil })
	orders, err := orderservice.New(ctx, orderservice.Config{DatabaseURL: dbURLs[2], MaxConns: cfg.MaxConns, MaxPendingOrders: cfg.MaxPendingOrders,
		JWKSURL: jwks, CatalogURL: s.CatalogURL, Messaging: msg, Logger: cfg.Logger,
		Saga: saga.Config{PollInterval: cfg.SagaPollInterval}, Steps: orderapp.SagaTuning{Timeout: cfg.SagaStepTimeout}, CatalogTimeout: cfg.CatalogTimeout,
		TracerProvider: tps[orderservice.Name]})
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, func() error { orders.Close(); return nil })

	// The operator console over the order service's database: its sagas
	// and its outbox.
	s.OrdersDatabaseURL = dbURLs[2]
	cl2, err := listen(&cfg.Ports, &cfg.Ports.Console)
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, func() error { _ = cl2.Close(); return nil })
	s.ConsoleURL = "http://" + cl2.Addr().String() + "/"
	ops, err := console.New(console.Config{Pool: orders.Pool(), Logger: cfg.Logger, Operator: "demo operator"})
	if err != nil {
		return nil, err
	}

	if s.Admin, err = ensureAdmin(ctx, users, cfg); err != nil {
		return nil, err
	}

	// Run them. One failing stops the others: a shop without its
	// orchestrator only piles up pending orders.
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	go func() {
		select {
		case <-ctx.Done():
		case <-runCtx.Done():
		}
		stop()
	}()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	serve := func(name string, fn func(context.Context, net.Listener) error, l net.Listener) {
		wg.Go(func() {
			if err := fn(runCtx, l); err != nil && !errors.Is(err, context.Canceled) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				mu.Unlock()
				stop()
			}
		})
	}
	serve(userservice.Name, users.Serve, ul)
	serve(catalogservice.Name, catalog.Serve, cl)
	serve(orderservice.Name, orders.Serve, ol)
	serve("console", ops.Serve, cl2)
	go func() {
		wg.Wait()
		s.err = errors.Join(errs...)
		close(s.done)
	}()

	if err := s.seed(ctx); err != nil {
		s.stop()
		<-s.done
		return nil, err
	}
	return s, nil
}

// SetPaymentsDown switches the users service's payment processor off or on:
// while off, every debit_credit answers with a transient error, so the
// order saga's pivot runs out of attempts and ends failed.
func (s *Shop) SetPaymentsDown(down bool) { s.paymentsDown.Store(down) }

// listen listens on 127.0.0.1:*port (0: any free port), which is one of
// ports' fields.
func listen(ports *Ports, port *int) (net.Listener, error) {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		return nil, ports.portError(port, err)
	}
	return l, nil
}

// ensureAdmin makes sure the configured admin exists, or one with a
// generated password, and logs it in.
func ensureAdmin(ctx context.Context, users *userservice.Service, cfg Config) (Admin, error) {
	a := Admin{Email: cfg.AdminEmail, Password: cfg.AdminPassword}
	if a.Email == "" {
		a.Email, a.Password, a.Generated = DefaultAdminEmail, rand.Text(), true
	}
	_, err := users.App().BootstrapAdmin(ctx, a.Email, a.Password)
	var taken *app.AdminEmailTakenError
	if err != nil && !(a.Generated && errors.As(err, &taken)) {
		return a, fmt.Errorf("shop: %w", err)
	}
	var tok app.Token
	if err == nil {
		tok, err = users.App().Login(ctx, a.Email, a.Password)
	}
	if err != nil && a.Generated {
		// The account is left from an earlier run, with a password printed
		// then, or a customer signed up with the default admin email (it is
		// never promoted): make a new admin rather than print one that does
		// not work.
		a.Email = "admin-" + randomHex(3) + "@sagabox.local"
		if _, err := users.App().BootstrapAdmin(ctx, a.Email, a.Password); err != nil {
			return a, fmt.Errorf("shop: %w", err)
		}
		tok, err = users.App().Login(ctx, a.Email, a.Password)
	}
	if err != nil {
		return a, fmt.Errorf("shop: log in as admin %s (does ADMIN_PASSWORD match the account's password?): %w", a.Email, err)
	}
	a.Token = tok.Token
	return a, nil
}

// Done is closed once every service has stopped.
func (s *Shop) Done() <-chan struct{} { return s.done }

// Wait waits until the shop has stopped (its context done, Close called or
// a service failed) and drained, then closes Kafka and the registry and, for
// a Fresh shop, drops its databases. It returns the services' errors.
func (s *Shop) Wait() error {
	<-s.done
	s.waitOnce.Do(func() { s.err = errors.Join(s.err, s.release()) })
	return s.err
}

// Close stops the shop and waits for it: the services stop taking requests,
// finish what is in flight and publish what their outboxes hold.
func (s *Shop) Close() error {
	s.stop()
	return s.Wait()
}

func (s *Shop) release() error {
	var errs []error
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		errs = append(errs, s.cleanup[i]())
	}
	s.cleanup = nil
	return errors.Join(errs...)
}
