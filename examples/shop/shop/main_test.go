package shop_test

import (
	"testing"

	"github.com/sagabox/sagabox/internal/testkit"
)

// Once a shop is closed, nothing it started may keep running: services,
// relays, consumers, Kafka, the registry.
func TestMain(m *testing.M) {
	testkit.VerifyNoLeaks(m)
}
