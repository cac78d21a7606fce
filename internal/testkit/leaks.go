package testkit

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// LeakOptions are the goroutines that are not ours: Sarama's metrics
// library keeps one global ticker, and pgx's pool stops its health checker
// asynchronously.
var LeakOptions = []goleak.Option{
	goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
	goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
}

// leakWait bounds how long VerifyNoLeaks waits for goroutines to go.
const leakWait = 30 * time.Second

// VerifyNoLeaks is goleak.VerifyTestMain for packages that run Kafka
// clients: it runs the tests and then, if they passed, checks that every
// goroutine they started is gone, failing the package with goleak's report
// if one is not. Sarama closes a client's broker connections in goroutines
// of their own after Close returns (safeAsyncClose); goleak.VerifyTestMain
// gives them about half a second, which a busy machine did not meet (a
// broker's responseReceiver was still there in CI). So it waits, up to 30
// s, for the goroutines to be gone: a real leak stays and still fails.
func VerifyNoLeaks(m *testing.M, extra ...goleak.Option) {
	code := m.Run()
	if code == 0 {
		opts := append(append([]goleak.Option(nil), LeakOptions...), extra...)
		deadline := time.Now().Add(leakWait)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			err := goleak.Find(opts...)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
				code = 1
				break
			}
			<-tick.C
		}
	}
	os.Exit(code)
}
