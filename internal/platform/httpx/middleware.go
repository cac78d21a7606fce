package httpx

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type ctxKey int

const requestIDKey ctxKey = iota

// RequestID returns the request's ID (from the X-Request-ID header, or made
// up), for logs.
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(requestIDKey).(string)
	return s
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += n
	return n, err
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Metrics are the HTTP metrics of one service, in its own registry (so
// several services can live in one process, as in the demo).
type Metrics struct {
	Registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics makes a registry with the Go runtime and process collectors and
// the HTTP metrics, every series labelled service=<service>.
func NewMetrics(service string) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"service": service}, reg)
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_requests_total",
			Help: "HTTP requests answered, by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "Time to answer HTTP requests, by method and route pattern.",
			Buckets: prometheus.DefBuckets,
		}, []string{"method", "route"}),
	}
	wrapped.MustRegister(m.requests, m.duration)
	return m
}

// Handler serves the registry in the Prometheus text format (GET /metrics).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// Middleware is the outermost wrapper of a service's mux: it gives the
// request an ID, refuses a path or query that is not valid UTF-8 or holds a
// NUL byte (400 invalid_text, see CheckText), recovers panics into a JSON 500, counts and times the
// request by route pattern (bounded label values: "/users/{id}", never the
// raw path) and logs one line per request.
func Middleware(log *slog.Logger, m *Metrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-ID")
		if id == "" || len(id) > 64 {
			var b [8]byte
			_, _ = rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		w.Header().Set("X-Request-ID", id)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, id))
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				log.ErrorContext(r.Context(), "http: panic", "panic", p, "path", r.URL.Path, "request_id", id)
				if rec.status == 0 {
					WriteError(rec, r, nil, NewError(http.StatusInternalServerError, "internal", "internal error"))
				}
			}
			// The mux sets r.Pattern on this very request when it matches.
			route := r.Pattern
			if route == "" {
				route = "unmatched"
			}
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			elapsed := time.Since(start)
			if m != nil {
				m.requests.WithLabelValues(r.Method, route, strconv.Itoa(status)).Inc()
				m.duration.WithLabelValues(r.Method, route).Observe(elapsed.Seconds())
			}
			level := slog.LevelInfo
			if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics" {
				level = slog.LevelDebug
			}
			log.Log(r.Context(), level, "http: request", "method", r.Method, "route", route, "path", r.URL.Path,
				"status", status, "bytes", rec.bytes, "duration_ms", elapsed.Milliseconds(), "request_id", id)
		}()
		// The text rules (see CheckText) before any handler sees the path
		// or the query.
		if err := CheckRequestText(r); err != nil {
			WriteError(rec, r, log, err)
			return
		}
		next.ServeHTTP(rec, r)
	})
}

// OpenAPI serves an embedded OpenAPI document (GET /openapi.json).
func OpenAPI(doc []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(doc)
	})
}

// JSONErrors serves mux, answering the requests no route matches (404) or
// whose method no route allows (405, with its Allow header) with JSON errors
// instead of the standard library's text/plain ones.
func JSONErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			nameSpan(r, pattern)
			return
		}
		rec := &bufferedWriter{header: http.Header{}}
		mux.ServeHTTP(rec, r)
		switch rec.status {
		case http.StatusNotFound:
			WriteError(w, r, nil, NotFound("not_found", "no route for %s %s", r.Method, r.URL.Path))
		case http.StatusMethodNotAllowed:
			w.Header().Set("Allow", rec.header.Get("Allow"))
			WriteError(w, r, nil, NewError(http.StatusMethodNotAllowed, "method_not_allowed",
				"%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow")))
		default: // redirects to the cleaned path and the like
			for k, v := range rec.header {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.status)
			_, _ = w.Write(rec.body)
		}
	})
}

// bufferedWriter keeps what the mux answers to unmatched requests (a few
// bytes) so JSONErrors can rewrite it.
type bufferedWriter struct {
	header http.Header
	status int
	body   []byte
}

func (b *bufferedWriter) Header() http.Header { return b.header }
func (b *bufferedWriter) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}
func (b *bufferedWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	b.body = append(b.body, p...)
	return len(p), nil
}

// nameSpan names the request's server span (otelhttp's, see
// internal/platform/telemetry) after the route that served it, "POST
// /orders" or "GET /orders/{id}": low cardinality, as the semantic
// conventions ask. Only the mux knows the route, inside the middleware
// that started the span.
func nameSpan(r *http.Request, pattern string) {
	span := trace.SpanFromContext(r.Context())
	if !span.IsRecording() {
		return
	}
	span.SetName(pattern)
	if _, route, ok := strings.Cut(pattern, " "); ok {
		span.SetAttributes(semconv.HTTPRoute(route))
	}
}
