package messaging

import (
	"context"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riferrei/srclient"

	"github.com/sagabox/sagabox/outbox"
)

// Runtime is a saga.Runtime over a service's Messaging, until the services
// move onto the public client. Attach does nothing: the service runs its
// participant itself (lifecycle.Run), stopping it before the relay drains.
type Runtime struct {
	DB        *pgxpool.Pool
	Messaging *Messaging
	Config    Config
	Log       *slog.Logger
	Metrics   prometheus.Registerer
}

func (r *Runtime) Pool() *pgxpool.Pool                      { return r.DB }
func (r *Runtime) Writer() *outbox.Writer                   { return r.Messaging.Writer }
func (r *Runtime) Codec() *outbox.Codec                     { return r.Messaging.Codec }
func (r *Runtime) Brokers() []string                        { return r.Config.Brokers }
func (r *Runtime) Registry() srclient.ISchemaRegistryClient { return r.Messaging.Registry }
func (r *Runtime) Logger() *slog.Logger                     { return r.Log }
func (r *Runtime) Registerer() prometheus.Registerer        { return r.Metrics }

// Attach does nothing: see Runtime.
func (r *Runtime) Attach(string, func(context.Context) error) error { return nil }
