// Package telemetry configures OpenTelemetry tracing for the services and
// the demo from the standard OTEL_* environment variables, and wraps their
// HTTP servers and clients with otelhttp.
//
// Tracing is off unless the environment asks for it: with neither
// OTEL_TRACES_EXPORTER=otlp nor an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, or with OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none, no SDK is built and the services use the
// global provider, a no-op: tracing off costs nothing. When on, the OTLP
// exporter reads its own variables (endpoint, headers, timeout, protocol:
// OTEL_EXPORTER_OTLP_PROTOCOL grpc or http/protobuf, the default), the
// sampler comes from OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
// (default parentbased_always_on), and the resource from OTEL_SERVICE_NAME
// and OTEL_RESOURCE_ATTRIBUTES.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Propagator is the trace context format on every hop, HTTP and Kafka: W3C
// traceparent and tracestate, and W3C baggage.
var Propagator propagation.TextMapPropagator = propagation.NewCompositeTextMapPropagator(
	propagation.TraceContext{}, propagation.Baggage{})

// Tracing is the SDK built from the environment. Provider is nil when
// tracing is off.
type Tracing struct {
	Provider trace.TracerProvider
	sdk      *sdktrace.TracerProvider
}

// Shutdown flushes and stops the exporter; a no-op when tracing is off.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.sdk == nil {
		return nil
	}
	return t.sdk.Shutdown(ctx)
}

// Enabled reports whether the environment turns tracing on (see the
// package doc), and why not when it does not.
func Enabled(getenv func(string) string) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	switch exp := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))); exp {
	case "none":
		return false, nil
	case "otlp":
		return true, nil
	case "":
		return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
	default:
		return false, fmt.Errorf("telemetry: OTEL_TRACES_EXPORTER=%q is not supported: use otlp (with OTEL_EXPORTER_OTLP_ENDPOINT) or none", exp)
	}
}

// FromEnv builds the SDK for service from the environment, or returns a
// Tracing with a nil Provider when tracing is off. OTEL_SERVICE_NAME, when
// set, names the service instead, unless forceName (the demo runs three
// services in one process and names each).
func FromEnv(ctx context.Context, service string, forceName bool) (*Tracing, error) {
	on, err := Enabled(os.Getenv)
	if err != nil || !on {
		return &Tracing{}, err
	}
	var exp sdktrace.SpanExporter
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch proto {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL=%q is not supported: use http/protobuf or grpc", proto)
	}
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
	}
	opts := []resource.Option{resource.WithTelemetrySDK(), resource.WithHost(), resource.WithProcessPID(),
		resource.WithAttributes(semconv.ServiceName(service))}
	if forceName {
		opts = []resource.Option{resource.WithTelemetrySDK(), resource.WithHost(), resource.WithProcessPID(),
			resource.WithFromEnv(), resource.WithAttributes(semconv.ServiceName(service))}
	} else {
		opts = append(opts, resource.WithFromEnv()) // OTEL_SERVICE_NAME wins
	}
	res, err := resource.New(ctx, opts...)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return &Tracing{Provider: sdk, sdk: sdk}, nil
}

// Install makes t the global provider (and Propagator the global
// propagator) when tracing is on, for code that uses the globals.
func (t *Tracing) Install() {
	if t == nil || t.Provider == nil {
		return
	}
	otel.SetTracerProvider(t.Provider)
	otel.SetTextMapPropagator(Propagator)
}

// Handler wraps an HTTP server's handler: each request gets a server span,
// a child of the request's traceparent, or a new root. tp nil is the
// global provider.
func Handler(h http.Handler, service string, tp trace.TracerProvider) http.Handler {
	opts := []otelhttp.Option{otelhttp.WithPropagators(Propagator)}
	if tp != nil {
		opts = append(opts, otelhttp.WithTracerProvider(tp))
	}
	return otelhttp.NewHandler(h, service, opts...)
}

// Client returns c (a new client when nil) with a transport that starts a
// client span per request and sends its traceparent. tp nil is the
// global provider.
func Client(c *http.Client, tp trace.TracerProvider) *http.Client {
	if c == nil {
		c = &http.Client{}
	}
	cc := *c
	opts := []otelhttp.Option{otelhttp.WithPropagators(Propagator)}
	if tp != nil {
		opts = append(opts, otelhttp.WithTracerProvider(tp))
	}
	base := cc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	cc.Transport = otelhttp.NewTransport(base, opts...)
	return &cc
}

// ForService is what a service's Run does before it builds the service:
// when tp is nil it builds the SDK from the environment (FromEnv), installs
// it and returns its provider (nil when tracing is off), with a function
// that flushes what is buffered, waiting 5 s at most so an unreachable
// collector cannot hang the shutdown. With a tp it returns tp and a no-op.
func ForService(ctx context.Context, service string, tp trace.TracerProvider) (trace.TracerProvider, func(), error) {
	if tp != nil {
		return tp, func() {}, nil
	}
	t, err := FromEnv(ctx, service, false)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", service, err)
	}
	t.Install()
	return t.Provider, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = t.Shutdown(sctx)
	}, nil
}
