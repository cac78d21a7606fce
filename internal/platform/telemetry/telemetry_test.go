package telemetry

import (
	"context"
	"testing"
)

// Tracing is off unless the environment asks for it, and a setting we
// cannot honour is an error that names it, not a silent no-op.
func TestEnabledFollowsTheOTELVariables(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		env     map[string]string
		on, err bool
	}{
		{env: nil},
		{env: map[string]string{"OTEL_SERVICE_NAME": "x"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"}, on: true},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://localhost:4318/v1/traces"}, on: true},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, on: true},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}},
		{env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, err: true},
	} {
		on, err := Enabled(func(k string) string { return c.env[k] })
		if on != c.on || (err != nil) != c.err {
			t.Errorf("%v: on %v, error %v; want on %v, error %v", c.env, on, err, c.on, c.err)
		}
	}
}

// With nothing configured FromEnv builds no SDK: the services keep the
// global no-op provider.
func TestFromEnvBuildsNothingWhenOff(t *testing.T) {
	for _, k := range []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		t.Setenv(k, "")
	}
	tr, err := FromEnv(context.Background(), "test", false)
	if err != nil || tr.Provider != nil {
		t.Fatalf("FromEnv with nothing set: provider %v, error %v; want none", tr.Provider, err)
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// With an OTLP endpoint set, FromEnv builds the SDK (the exporter connects
// lazily: nothing listens here) and Shutdown stops it.
func TestFromEnvBuildsTheSDKForAnEndpoint(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	tr, err := FromEnv(context.Background(), "test", false)
	if err != nil || tr.Provider == nil {
		t.Fatalf("FromEnv with an endpoint: provider %v, error %v", tr.Provider, err)
	}
	_, span := tr.Provider.Tracer("t").Start(context.Background(), "x")
	if !span.IsRecording() {
		t.Fatal("span not recording with OTEL_TRACES_SAMPLER=always_on")
	}
	span.End()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // do not wait for the unreachable endpoint
	_ = tr.Shutdown(ctx)
}
