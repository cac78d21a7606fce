package orderservice_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/orderservice"
	"github.com/sagabox/sagabox/orderservice/adapters"
	"github.com/sagabox/sagabox/saga"
)

// The saga's and the SKU check's timings come from the environment, so that
// a test (the crash test) can shorten them and an operator can lengthen
// them; a malformed one is named.
func TestConfigFromEnvironmentTimesTheSagaAndTheSKUCheck(t *testing.T) {
	for k, v := range map[string]string{"DATABASE_URL": "postgres://x/orders", "JWKS_URL": "http://users:8001/.well-known/jwks.json",
		"SAGA_STEP_TIMEOUT": "2s", "SAGA_STEP_ATTEMPTS": "4", "SAGA_STEP_MAX_BACKOFF": "1s", "SAGA_POLL_INTERVAL": "50ms",
		"CATALOG_TIMEOUT": "20s"} {
		t.Setenv(k, v)
	}
	cfg, err := orderservice.ConfigFromEnv()
	testkit.Must(t, err, "config")
	if cfg.Steps.Timeout != 2*time.Second || cfg.Steps.Retry.MaxAttempts != 4 || cfg.Steps.Retry.MaxBackoff != time.Second ||
		cfg.Saga.PollInterval != 50*time.Millisecond || cfg.CatalogTimeout != 20*time.Second {
		t.Fatalf("steps %+v, poll %s, catalog timeout %s", cfg.Steps, cfg.Saga.PollInterval, cfg.CatalogTimeout)
	}
	t.Setenv("SAGA_STEP_TIMEOUT", "")
	t.Setenv("CATALOG_TIMEOUT", "")
	if cfg, err = orderservice.ConfigFromEnv(); err != nil || cfg.Steps.Timeout != saga.DefaultTimeout || cfg.CatalogTimeout != adapters.CatalogTimeout {
		t.Fatalf("defaults: %v %+v %s", err, cfg.Steps, cfg.CatalogTimeout)
	}
	t.Setenv("SAGA_STEP_TIMEOUT", "soon")
	if _, err := orderservice.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "SAGA_STEP_TIMEOUT") {
		t.Fatalf("malformed SAGA_STEP_TIMEOUT: %v", err)
	}
}
