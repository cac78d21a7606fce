package outbox

import "github.com/prometheus/client_golang/prometheus"

// MetricsPublishedForTest exposes the published counter for tests.
func MetricsPublishedForTest(m *Metrics) prometheus.Collector { return m.published }
