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
	DefaultIdleTimeout       = 60 * time.Second
)

// Serve serves h on l until ctx is done, then shuts down gracefully: it stops
// accepting, lets the requests in flight finish (for at most
// DefaultShutdownTimeout), and returns. A nil error means a clean shutdown.
//
// Call Health.Drain before cancelling ctx when a load balancer should see
// /readyz fail first.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		IdleTimeout:       DefaultIdleTimeout,
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
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultShutdownTimeout)
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
