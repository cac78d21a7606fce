package catalogservice_test

import (
	"testing"

	"github.com/sagabox/sagabox/internal/testkit"
)

// The HTTP server, the saga participant, the consumers and the relay must
// leave no goroutine behind once Run returns.
func TestMain(m *testing.M) {
	testkit.VerifyNoLeaks(m)
}
