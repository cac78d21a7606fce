package outbox_test

import (
	"testing"

	"github.com/sagabox/sagabox/internal/testkit"
)

// Every relay goroutine (housekeeping, listener, per-broker sends) must be
// gone once Run returns and the test's resources are closed.
func TestMain(m *testing.M) {
	testkit.VerifyNoLeaks(m)
}
