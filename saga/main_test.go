package saga_test

import (
	"testing"

	"github.com/sagabox/sagabox/internal/testkit"
)

// Orchestrators, participants and relays must leave no goroutine behind once
// their Run returns; testkit.VerifyNoLeaks waits for Sarama's asynchronous
// broker closes before it calls what is left a leak.
func TestMain(m *testing.M) {
	testkit.VerifyNoLeaks(m)
}
