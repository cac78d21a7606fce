package httpx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Server defaults.
const (
	DefaultShutdownTimeout   = 15 * time.Second
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 15 * time.Second
	DefaultWriteTimeout      = 20 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
)

// ServerConfig bounds how long a client may hold a connection. Without
// ReadTimeout a client sending its body one byte every few seconds holds a
// connection (and a handler goroutine) forever; without WriteTimeout one
// that never reads its answer does the same.
type ServerConfig struct {
	// ReadHeaderTimeout bounds reading the request line and headers.
	// Defaults to 5s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading the whole request, body included. Defaults
	// to 15s: a MaxBodyBytes body at dial-up speed.
	ReadTimeout time.Duration
	// WriteTimeout bounds the time from the end of the request headers to
	// the end of the response. Defaults to 20s. Handlers that wait on
	// purpose (Prefer: wait, long polls) extend it for their request with
	// ExtendWriteDeadline.
	WriteTimeout time.Duration
	// IdleTimeout bounds a keep-alive connection between requests. Defaults
	// to 60s.
	IdleTimeout time.Duration
	// ShutdownTimeout bounds the graceful shutdown. Defaults to 15s.
	ShutdownTimeout time.Duration
}

// WithDefaults returns a copy of c with every unset field defaulted.
func (c ServerConfig) WithDefaults() ServerConfig {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&c.ReadTimeout, DefaultReadTimeout)
	def(&c.WriteTimeout, DefaultWriteTimeout)
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.ShutdownTimeout, DefaultShutdownTimeout)
	return c
}

// ExtendWriteDeadline gives the request's response d more from now, for a
// handler that waits on purpose (a long poll) longer than
// ServerConfig.WriteTimeout allows. It reports whether the writer supports
// deadlines (a test recorder does not, and needs none).
func ExtendWriteDeadline(w http.ResponseWriter, d time.Duration) bool {
	return http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d)) == nil
}

// Serve serves h on l until ctx is done, then shuts down gracefully: it stops
// accepting, lets the requests in flight finish (for at most
// DefaultShutdownTimeout), and returns. A nil error means a clean shutdown.
// The timeouts are ServerConfig's defaults; ServeConfig chooses them.
//
// Call Health.Drain before cancelling ctx when a load balancer should see
// /readyz fail first.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	return ServeConfig(ctx, l, h, log, ServerConfig{})
}

// ServeConfig is Serve with the timeouts of cfg.
func ServeConfig(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger, cfg ServerConfig) error {
	cfg = cfg.WithDefaults()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		// Handlers get a context that ends at shutdown only through their
		// own request; BaseContext keeps values (not cancellation) of ctx.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	log.InfoContext(ctx, "http: listening", "addr", l.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("http: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("http: shutdown: %w", err)
	}
	log.InfoContext(ctx, "http: stopped")
	return nil
}

// ListenAndServe is Serve on a new TCP listener at addr (":8080").
func ListenAndServe(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("http: listen on %s: %w", addr, err)
	}
	return Serve(ctx, l, h, log)
}
