package httpx

import (
	"testing"

	"go.uber.org/goleak"
)

// Serve must leave no goroutine behind once it returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
