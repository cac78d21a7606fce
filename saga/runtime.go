package saga

import (
	"context"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"

	"github.com/sagabox/sagabox/outbox"
)

// Runtime is what an Orchestrator or a Participant takes from the client
// that owns a service's messaging, instead of repeating its fields in every
// config: sagabox.Client implements it. The saga package declares it here,
// where it is used, so that saga does not depend on the client.
type Runtime interface {
	// Pool is the service's database, holding the saga and outbox tables.
	Pool() *pgxpool.Pool
	// Writer writes commands and replies into the outbox.
	Writer() *outbox.Writer
	// Codec knows saga.Schemas() and every payload type.
	Codec() *outbox.Codec
	// Brokers are Kafka's bootstrap addresses; empty when the service does
	// not consume (then Run refuses to start).
	Brokers() []string
	// Registry resolves the schema IDs of consumed records; nil without
	// Brokers.
	Registry() srclient.ISchemaRegistryClient
	// Logger is never nil.
	Logger() *slog.Logger
	// Registerer gets the metrics; nil for none.
	Registerer() prometheus.Registerer
	// Attach adds run to the parts the runtime runs: they are started
	// together and stopped before the outbox relay drains, so that what they
	// wrote last is still published. It fails once the runtime runs.
	Attach(name string, run func(ctx context.Context) error) error
}
