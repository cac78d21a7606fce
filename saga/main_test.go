package saga_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// leakOptions are the goroutines that are not ours.
var leakOptions = []goleak.Option{
	// Sarama's metrics library keeps one global ticker goroutine.
	goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
	// pgx's pool closes its background health checker asynchronously.
	goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
}

// Orchestrators, participants and relays must leave no goroutine behind once
// their Run returns. Sarama closes a client's broker connections in
// goroutines of their own after Close returns (safeAsyncClose), and
// goleak.VerifyTestMain gives them about half a second: on a busy machine a
// broker's responseReceiver was still there. So the check waits, up to a
// generous deadline, for the goroutines to be gone; a real leak stays.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := waitNoLeaks(30 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func waitNoLeaks(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := goleak.Find(leakOptions...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		<-tick.C
	}
}
