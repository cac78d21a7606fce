package saga

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagabox/sagabox/internal/promreg"
)

// metrics are labelled by saga type. Several orchestrators may share one
// registerer: the second one reuses the collectors the first registered.
type metrics struct {
	started     prometheus.Counter
	finished    *prometheus.CounterVec // by status
	stepLatency prometheus.Observer
	inFlight    prometheus.Gauge
	ignored     prometheus.Counter
	// late counts late replies recorded in saga_late_replies, by
	// disposition (applied, compensated, recorded).
	late *prometheus.CounterVec
	// askedAgain counts the commands re-sent to pivot and retriable steps
	// whose outcome is unknown.
	askedAgain prometheus.Counter
	// unknownVersion counts sagas met whose definition version the
	// orchestrator does not have.
	unknownVersion prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, sagaType string) (*metrics, error) {
	labels := prometheus.Labels{"saga_type": sagaType}
	started := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "started_total", Help: "Sagas started."}, []string{"saga_type"})
	finished := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "finished_total", Help: "Sagas finished, by final status: succeeded, compensated or failed."}, []string{"saga_type", "status"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "step_duration_seconds", Help: "Time from sending a step's command (or starting a local step) to its outcome.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12)}, []string{"saga_type"})
	inFlight := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "in_flight", Help: "Sagas running or compensating, as last counted in the database."}, []string{"saga_type"})
	ignored := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "replies_ignored_total", Help: "Late or duplicate replies ignored."}, []string{"saga_type"})
	unknown := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "unknown_version_total", Help: "Replies and timers of sagas whose definition version this orchestrator does not have (left alone)."}, []string{"saga_type"})
	late := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "late_replies_total", Help: "Replies that came after the saga stopped waiting for them and told it something new, by what was done: applied (the saga still waited on the step), compensated (the action's compensation was sent), recorded (kept in saga_late_replies for an operator)."},
		[]string{"saga_type", "disposition"})
	asked := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "unknown_outcome_retries_total", Help: "Commands re-sent to a pivot or retriable step that timed out past its retry attempts (its outcome unknown): a participant that stays silent shows here."},
		[]string{"saga_type"})
	if reg != nil {
		var err error
		if late, err = promreg.Register(reg, late); err != nil {
			return nil, err
		}
		if asked, err = promreg.Register(reg, asked); err != nil {
			return nil, err
		}
		if unknown, err = promreg.Register(reg, unknown); err != nil {
			return nil, err
		}
		if started, err = promreg.Register(reg, started); err != nil {
			return nil, err
		}
		if finished, err = promreg.Register(reg, finished); err != nil {
			return nil, err
		}
		if latency, err = promreg.Register(reg, latency); err != nil {
			return nil, err
		}
		if inFlight, err = promreg.Register(reg, inFlight); err != nil {
			return nil, err
		}
		if ignored, err = promreg.Register(reg, ignored); err != nil {
			return nil, err
		}
	}
	// Every series exists from the start, at 0, so that an alert on it
	// reads 0 and not "no data".
	for _, st := range []Status{StatusSucceeded, StatusCompensated, StatusFailed} {
		finished.MustCurryWith(labels).WithLabelValues(string(st))
	}
	for _, d := range lateDispositions {
		late.MustCurryWith(labels).WithLabelValues(string(d))
	}
	return &metrics{
		unknownVersion: unknown.With(labels),
		started:        started.With(labels),
		finished:       finished.MustCurryWith(labels),
		stepLatency:    latency.With(labels),
		inFlight:       inFlight.With(labels),
		ignored:        ignored.With(labels),
		late:           late.MustCurryWith(labels),
		askedAgain:     asked.With(labels),
	}, nil
}

func (m *metrics) record(finishes []Status, hist []*histOp) {
	for _, st := range finishes {
		m.finished.WithLabelValues(string(st)).Inc()
	}
	for _, h := range hist {
		if h.ended && h.latency > 0 {
			m.stepLatency.Observe(h.latency.Seconds())
		}
	}
}
