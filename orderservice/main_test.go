package orderservice_test

import (
	"testing"

	"go.uber.org/goleak"
)

// The HTTP server, the saga participant, the consumers and the relay must
// leave no goroutine behind once Run returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Sarama's metrics library keeps one global ticker goroutine.
		goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
		// pgx's pool closes its background health checker asynchronously.
		goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
	)
}
