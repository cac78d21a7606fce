package console_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/sagabox/sagabox/internal/testkit"
)

// The console starts no goroutine of its own (Run is the caller's); the
// shop fixture's client must stop all of its own.
func TestMain(m *testing.M) {
	testkit.VerifyNoLeaks(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}
