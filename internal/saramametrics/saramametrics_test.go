package saramametrics_test

import (
	"testing"

	"github.com/IBM/sarama"
	"github.com/rcrowley/go-metrics"
	"github.com/sagabox/sagabox/internal/saramametrics"
)

// Sarama's own calls (metrics.GetOrRegisterMeter and friends, as in
// sarama/broker.go and sarama/metrics.go) get metrics that keep nothing:
// marking them a thousand times leaves them at zero.
func TestSaramasMetricsRecordNothing(t *testing.T) {
	t.Parallel()
	r := saramametrics.Off()
	m := metrics.GetOrRegisterMeter("incoming-byte-rate", r)
	h := metrics.GetOrRegisterHistogram("request-latency-in-ms", r, metrics.NewExpDecaySample(1028, 0.015))
	c := metrics.GetOrRegisterCounter("requests-in-flight", r)
	for range 1000 {
		m.Mark(10)
		h.Update(10)
		c.Inc(1)
	}
	if m.Count() != 0 || h.Count() != 0 || c.Count() != 0 {
		t.Fatalf("metrics recorded: meter %d, histogram %d, counter %d; want all 0", m.Count(), h.Count(), c.Count())
	}
	if _, ok := m.(metrics.NilMeter); !ok {
		t.Fatalf("meter is a %T, want metrics.NilMeter (no ticking goroutine)", m)
	}
	// What is not a Sarama metric kind is still kept.
	tm := metrics.GetOrRegisterTimer("timer", r)
	if got := r.Get("timer"); got != tm {
		t.Fatalf("Get(timer) = %v, want the timer registered", got)
	}
	tm.Stop()
}

// A sarama.Config with the registry validates (what the relay and the saga
// consumers build).
func TestConfigValidates(t *testing.T) {
	t.Parallel()
	c := sarama.NewConfig()
	c.MetricRegistry = saramametrics.Off()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}
