package shop_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Once a shop is closed, nothing it started may keep running: services,
// relays, consumers, Kafka, the registry.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Sarama's metrics library keeps one global ticker goroutine.
		goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
		// pgx's pool closes its background health checker asynchronously.
		goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
	)
}
