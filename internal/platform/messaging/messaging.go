// Package messaging sets up what every reference service needs to take part
// in sagas and publish events: the outbox and saga tables in the service's
// own database, a codec knowing the saga envelopes and the shop's schemas,
// an outbox writer, and (when Kafka is configured) the relay that publishes
// what the writer wrote.
package messaging

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"

	"github.com/sagabox/sagabox/internal/platform/config"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
)

// Config says where Kafka and the Schema Registry are.
type Config struct {
	// Brokers are the Kafka bootstrap addresses (KAFKA_BROKERS, comma
	// separated). Empty: the service runs its HTTP API only; messages
	// written to the outbox wait there until a relay runs.
	Brokers []string
	// RegistryURL is the Schema Registry (SCHEMA_REGISTRY_URL). Required
	// with Brokers unless Registry is set.
	RegistryURL string
	// Registry, when set, is used instead of a client for RegistryURL.
	Registry srclient.ISchemaRegistryClient
}

// FromEnv reads Config from e.
func FromEnv(e *config.Env) Config {
	return Config{Brokers: e.List("KAFKA_BROKERS", nil), RegistryURL: e.String("SCHEMA_REGISTRY_URL", "")}
}

// Enabled reports whether Kafka is configured.
func (c Config) Enabled() bool { return len(c.Brokers) > 0 }

// Messaging is a service's outbox side.
type Messaging struct {
	Codec    *outbox.Codec
	Writer   *outbox.Writer
	Registry srclient.ISchemaRegistryClient // nil when Kafka is not configured
	Relay    *outbox.Relay                  // nil when Kafka is not configured
}

// Setup migrates the outbox and saga tables into pool's database and builds
// the codec (saga envelopes and schemas.All()), the writer and, with Kafka,
// the relay. metrics may be nil.
func Setup(ctx context.Context, pool *pgxpool.Pool, cfg Config, log *slog.Logger, metrics prometheus.Registerer) (*Messaging, error) {
	if cfg.Enabled() && cfg.Registry == nil && cfg.RegistryURL == "" {
		return nil, errors.New("messaging: SCHEMA_REGISTRY_URL is required with KAFKA_BROKERS")
	}
	if err := outbox.Migrate(ctx, pool); err != nil {
		return nil, fmt.Errorf("messaging: %w", err)
	}
	if err := saga.Migrate(ctx, pool); err != nil {
		return nil, fmt.Errorf("messaging: %w", err)
	}
	codec, err := outbox.NewCodec(append(saga.Schemas(), schemas.All()...)...)
	if err != nil {
		return nil, err
	}
	m := &Messaging{Codec: codec}
	var notify func()
	if cfg.Enabled() {
		m.Registry = cfg.Registry
		if m.Registry == nil {
			m.Registry = srclient.NewSchemaRegistryClient(cfg.RegistryURL)
		}
		m.Relay, err = outbox.NewRelay(outbox.RelayConfig{Pool: pool, Brokers: cfg.Brokers, Registry: m.Registry,
			Logger: log, Registerer: metrics})
		if err != nil {
			return nil, err
		}
		notify = m.Relay.Notify
	}
	m.Writer, err = outbox.NewWriter(outbox.WriterConfig{Codec: codec, Notify: notify, Logger: log})
	if err != nil {
		return nil, err
	}
	if err := m.Writer.StoreSchemas(ctx, pool); err != nil {
		return nil, err
	}
	return m, nil
}
