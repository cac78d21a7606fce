package httpx

import (
	"context"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// CheckTimeout bounds each readiness check.
const CheckTimeout = 2 * time.Second

// Check reports whether one dependency is usable; a nil error means ready.
type Check func(ctx context.Context) error

// Health answers /healthz (the process is up and serving: always 200) and
// /readyz (every registered check passes and the service is not draining:
// 200, else 503 with the failing checks), so an orchestrator restarts a
// wedged process but only stops routing to one whose database is away.
type Health struct {
	mu       sync.Mutex
	checks   map[string]Check
	draining atomic.Bool
}

// NewHealth returns a Health with no checks.
func NewHealth() *Health { return &Health{checks: map[string]Check{}} }

// Add registers a readiness check under name ("postgres", "kafka").
func (h *Health) Add(name string, c Check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks[name] = c
}

// Drain makes /readyz fail from now on, so traffic moves away before the
// server shuts down.
func (h *Health) Drain() { h.draining.Store(true) }

// Register adds GET /healthz and GET /readyz to mux.
func (h *Health) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", h.ready)
}

func (h *Health) ready(w http.ResponseWriter, r *http.Request) {
	if h.draining.Load() {
		WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "draining"})
		return
	}
	h.mu.Lock()
	names := make([]string, 0, len(h.checks))
	for n := range h.checks {
		names = append(names, n)
	}
	checks := make(map[string]Check, len(h.checks))
	for n, c := range h.checks {
		checks[n] = c
	}
	h.mu.Unlock()
	sort.Strings(names)

	results := map[string]string{}
	ok := true
	for _, n := range names {
		ctx, cancel := context.WithTimeout(r.Context(), CheckTimeout)
		err := checks[n](ctx)
		cancel()
		if err != nil {
			ok = false
			results[n] = err.Error()
		} else {
			results[n] = "ok"
		}
	}
	status, code := "ok", http.StatusOK
	if !ok {
		status, code = "unavailable", http.StatusServiceUnavailable
	}
	WriteJSON(w, code, map[string]any{"status": status, "checks": results})
}
