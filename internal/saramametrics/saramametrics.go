// Package saramametrics gives Sarama a metrics registry that records
// nothing.
//
// Sarama updates rcrowley/go-metrics meters and histograms on every request
// and response it sends or receives (request rates, byte rates, latency and
// size histograms with an exponentially decaying reservoir, per broker and
// per topic), and each meter is ticked by a background goroutine. sagabox
// exports none of them (it has its own Prometheus metrics), so by default
// its Sarama clients, the relay's producer and the saga consumers, get this
// registry instead: in a CPU profile of cmd/sagabench paced at 350 sagas/s,
// go-metrics' histogram updates alone were 4 % of the process. A caller who
// wants Sarama's metrics passes its own sarama.Config with a registry.
package saramametrics

import "github.com/rcrowley/go-metrics"

// Off returns a registry whose meters, histograms, counters and gauges do
// nothing: every GetOrRegister of one of those hands out go-metrics' Nil
// implementation, which keeps no state and starts no goroutine. Anything
// else is kept in a plain registry, so a caller that asks for another kind
// of metric still gets one.
func Off() metrics.Registry { return off{metrics.NewRegistry()} }

type off struct{ metrics.Registry }

func (r off) GetOrRegister(name string, i any) any {
	switch i.(type) {
	case func() metrics.Meter, metrics.Meter:
		return metrics.NilMeter{}
	case func() metrics.Histogram, metrics.Histogram:
		return metrics.NilHistogram{}
	case func() metrics.Counter, metrics.Counter:
		return metrics.NilCounter{}
	case func() metrics.Gauge, metrics.Gauge:
		return metrics.NilGauge{}
	case func() metrics.GaugeFloat64, metrics.GaugeFloat64:
		return metrics.NilGaugeFloat64{}
	}
	return r.Registry.GetOrRegister(name, i)
}

func (r off) Register(name string, i any) error {
	switch i.(type) {
	case metrics.Meter, metrics.Histogram, metrics.Counter, metrics.Gauge, metrics.GaugeFloat64:
		return nil // nothing to keep
	}
	return r.Registry.Register(name, i)
}
