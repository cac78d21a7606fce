package saga

import (
	"errors"
	"fmt"

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

// Outcomes of a consumed record, the "result" label of
// sagabox_saga_consumed_total.
const (
	consumedOK    = "ok"    // handled (or dead-lettered): the offset moves on
	consumedRetry = "retry" // the handler failed: delivered again
)

// Outcomes of a participant's command, the "outcome" label of
// sagabox_saga_commands_total: the reply's outcome (succeeded, rejected,
// error), or failed when the transaction failed and nothing was answered
// (the command is delivered again).
var commandOutcomes = []string{string(OutcomeSucceeded), string(OutcomeRejected), string(OutcomeError), "failed"}

// unknownCommand is the "command" label of commands no handler knows, so
// that a stray name on the wire cannot add series.
const unknownCommand = "unknown"

// consumerMetrics are those of one Kafka consumer of the saga package (a
// participant's commands, an orchestrator's replies, a Consumer's events),
// labelled by consumer: the router handler's name.
type consumerMetrics struct {
	consumed    *prometheus.CounterVec // by result
	deadLetters prometheus.Counter
	recordAge   prometheus.Observer
}

func newConsumerMetrics(reg prometheus.Registerer, consumer string) (*consumerMetrics, error) {
	labels := prometheus.Labels{"consumer": consumer}
	consumed := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "consumed_total", Help: "Records handled, by result: ok (the offset moves on) or retry (the handler failed; delivered again)."},
		[]string{"consumer", "result"})
	dead := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "dead_letters_total", Help: "Records that could not be decoded, written to the dead-letter topic with the reason."},
		[]string{"consumer"})
	age := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "record_age_seconds", Help: "Time from a record's Kafka timestamp to its handling: the consumer's lag, in time.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)}, []string{"consumer"})
	if reg != nil {
		var errs [3]error
		consumed, errs[0] = promreg.Register(reg, consumed)
		dead, errs[1] = promreg.Register(reg, dead)
		age, errs[2] = promreg.Register(reg, age)
		if err := errors.Join(errs[:]...); err != nil {
			return nil, fmt.Errorf("saga: register consumer metrics: %w", err)
		}
	}
	m := &consumerMetrics{consumed: consumed.MustCurryWith(labels), deadLetters: dead.With(labels), recordAge: age.With(labels)}
	m.consumed.WithLabelValues(consumedOK)
	m.consumed.WithLabelValues(consumedRetry)
	return m, nil
}

// participantMetrics are a participant's, labelled by participant and
// command.
type participantMetrics struct {
	commands   *prometheus.CounterVec // by command, outcome
	duplicates *prometheus.CounterVec // by command
	duration   prometheus.ObserverVec // by command
}

func newParticipantMetrics(reg prometheus.Registerer, participant string, commands []string) (*participantMetrics, error) {
	labels := prometheus.Labels{"participant": participant}
	cmds := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "commands_total", Help: "Commands a participant answered, by command and outcome: succeeded, rejected, error (the handler failed; the orchestrator retries), failed (the transaction failed; delivered again)."},
		[]string{"participant", "command", "outcome"})
	dups := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "command_duplicates_total", Help: "Commands a participant had answered before, answered again from its inbox without running the handler."},
		[]string{"participant", "command"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "command_handler_duration_seconds", Help: "Time a participant's handler took (inside the command's transaction).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 3, 12)}, []string{"participant", "command"})
	if reg != nil {
		var errs [3]error
		cmds, errs[0] = promreg.Register(reg, cmds)
		dups, errs[1] = promreg.Register(reg, dups)
		dur, errs[2] = promreg.Register(reg, dur)
		if err := errors.Join(errs[:]...); err != nil {
			return nil, fmt.Errorf("saga: register participant metrics: %w", err)
		}
	}
	m := &participantMetrics{commands: cmds.MustCurryWith(labels), duplicates: dups.MustCurryWith(labels),
		duration: dur.MustCurryWith(labels)}
	for _, c := range append(commands, unknownCommand) {
		for _, o := range commandOutcomes {
			m.commands.WithLabelValues(c, o)
		}
		m.duplicates.WithLabelValues(c)
	}
	return m, nil
}

// eventOutcomes are the "outcome" label of sagabox_saga_events_total.
var eventOutcomes = []string{"handled", "duplicate", "failed"}

// newEventMetrics is a Consumer's: events by outcome (handled, duplicate:
// skipped by the inbox, failed: delivered again).
func newEventMetrics(reg prometheus.Registerer, consumer string) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sagabox", Subsystem: "saga",
		Name: "events_total", Help: "Events a Consumer handled, by outcome: handled, duplicate (recorded in its inbox before: skipped), failed (the handler failed; delivered again)."},
		[]string{"consumer", "outcome"})
	if reg != nil {
		var err error
		if c, err = promreg.Register(reg, c); err != nil {
			return nil, fmt.Errorf("saga: register consumer metrics: %w", err)
		}
	}
	m := c.MustCurryWith(prometheus.Labels{"consumer": consumer})
	for _, o := range eventOutcomes {
		m.WithLabelValues(o)
	}
	return m, nil
}
