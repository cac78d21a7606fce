package outbox_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every relay goroutine (housekeeping, listener, per-broker sends) must be
// gone once Run returns and the test's resources are closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Sarama's metrics library keeps one global ticker goroutine.
		goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
		// pgx's pool closes its background health checker asynchronously.
		goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
	)
}
