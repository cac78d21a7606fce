package outbox

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/internal/promreg"
)

// Failure outcomes, the values of the "outcome" label of
// sagabox_outbox_failed_total.
const (
	failedRetry  = "retry"  // backed off, will be tried again
	failedParked = "parked" // given up on, waiting for an operator
)

// metrics are the relay's Prometheus metrics. Relays sharing a registerer
// (RelayConfig.Registerer) share the collectors: the second one reuses what
// the first registered.
type metrics struct {
	pending       prometheus.Gauge
	oldestAge     prometheus.Gauge
	parkedTotal   prometheus.Gauge
	published     *prometheus.CounterVec // by topic: not known before the first message
	failed        *prometheus.CounterVec // by outcome: retry, parked
	batchSize     prometheus.Histogram
	batchDuration prometheus.Histogram
	ownedShards   prometheus.Gauge // summed over the relays sharing it
	vacuums       prometheus.Counter
	fenced        prometheus.Counter
}

// newMetrics creates the relay metrics and registers them with reg, or
// reuses the ones already registered there. With a nil reg they are created
// but not registered.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "pending_messages",
			Help: "Messages committed but not yet published (parked ones excluded).",
		}),
		oldestAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "oldest_pending_age_seconds",
			Help: "Age of the oldest pending message; grows when the relay is stuck.",
		}),
		parkedTotal: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "parked_messages",
			Help: "Messages parked after failing; an operator retries or discards them.",
		}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "published_total",
			Help: "Messages published to Kafka, by topic.",
		}, []string{"topic"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "failed_total",
			Help: "Failed publish attempts, by outcome: retry (backed off) or parked.",
		}, []string{"outcome"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "batch_size",
			Help:    "Messages per relay batch.",
			Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000},
		}),
		batchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "batch_duration_seconds",
			Help:    "Time to fetch, publish and mark one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		ownedShards: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "owned_shards",
			Help: "Shards the relays of this process hold leases on.",
		}),
		vacuums: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "vacuums_total",
			Help: "VACUUMs of the outbox table run by the relay (RelayConfig.VacuumAfter).",
		}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "fenced_messages_total",
			Help: "Messages a relay did not publish or mark because its lease on their shard lapsed or changed hands (paused past LeaseTTL); the new owner publishes them.",
		}),
	}
	if reg != nil {
		var errs [10]error
		m.pending, errs[0] = promreg.Register(reg, m.pending)
		m.oldestAge, errs[1] = promreg.Register(reg, m.oldestAge)
		m.parkedTotal, errs[2] = promreg.Register(reg, m.parkedTotal)
		m.published, errs[3] = promreg.Register(reg, m.published)
		m.failed, errs[4] = promreg.Register(reg, m.failed)
		m.batchSize, errs[5] = promreg.Register(reg, m.batchSize)
		m.batchDuration, errs[6] = promreg.Register(reg, m.batchDuration)
		m.ownedShards, errs[7] = promreg.Register(reg, m.ownedShards)
		m.vacuums, errs[8] = promreg.Register(reg, m.vacuums)
		m.fenced, errs[9] = promreg.Register(reg, m.fenced)
		if err := errors.Join(errs[:]...); err != nil {
			return nil, fmt.Errorf("outbox: register relay metrics: %w", err)
		}
	}
	// Every outcome is known: present at 0 from the start, so a rate()
	// over it has a baseline before the first failure.
	m.failed.WithLabelValues(failedRetry)
	m.failed.WithLabelValues(failedParked)
	return m, nil
}
