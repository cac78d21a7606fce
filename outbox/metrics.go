package outbox

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the relay's Prometheus metrics. Create them once per process
// with NewMetrics and share them between relays.
type Metrics struct {
	pending       prometheus.Gauge
	oldestAge     prometheus.Gauge
	parkedTotal   prometheus.Gauge
	published     *prometheus.CounterVec
	failed        *prometheus.CounterVec
	batchSize     prometheus.Histogram
	batchDuration prometheus.Histogram
	ownedShards   prometheus.Gauge
	vacuums       prometheus.Counter
}

// NewMetrics creates the relay metrics and registers them with reg. With a
// nil reg they are created but not registered (useful in tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
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
			Help: "Messages published to Kafka.",
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
			Help: "Shards this process's relay holds leases on.",
		}),
		vacuums: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "sagabox", Subsystem: "outbox", Name: "vacuums_total",
			Help: "VACUUMs of the outbox table run by the relay (RelayConfig.VacuumAfter).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.pending, m.oldestAge, m.parkedTotal, m.published, m.failed, m.batchSize, m.batchDuration, m.ownedShards, m.vacuums)
	}
	return m
}
