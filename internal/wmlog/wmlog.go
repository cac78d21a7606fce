// Package wmlog adapts a slog.Logger for watermill, as
// watermill.NewSlogLoggerWithLevelMapping does, but checks the level before
// anything is built. watermill's adapter turns a message's log fields into
// slog arguments first and lets slog drop them after: watermill-kafka logs
// several Trace lines per consumed message, and building them cost 3-4 % of
// the CPU of cmd/sagabench with every one of them discarded.
package wmlog

import (
	"context"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill"
)

// New returns the adapter. watermill's Info becomes slog's Debug: the
// router and the subscriber report every (re)connection and handler start
// at Info, which is noise in a service's log.
func New(log *slog.Logger) watermill.LoggerAdapter {
	levels := map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug}
	return gated{inner: watermill.NewSlogLoggerWithLevelMapping(log, levels), log: log, levels: levels}
}

type gated struct {
	inner  watermill.LoggerAdapter
	log    *slog.Logger
	levels map[slog.Level]slog.Level
}

func (g gated) enabled(l slog.Level) bool {
	if m, ok := g.levels[l]; ok {
		l = m
	}
	return g.log.Enabled(context.Background(), l)
}

func (g gated) Error(msg string, err error, fields watermill.LogFields) {
	if g.enabled(slog.LevelError) {
		g.inner.Error(msg, err, fields)
	}
}

func (g gated) Info(msg string, fields watermill.LogFields) {
	if g.enabled(slog.LevelInfo) {
		g.inner.Info(msg, fields)
	}
}

func (g gated) Debug(msg string, fields watermill.LogFields) {
	if g.enabled(slog.LevelDebug) {
		g.inner.Debug(msg, fields)
	}
}

func (g gated) Trace(msg string, fields watermill.LogFields) {
	if g.enabled(watermill.LevelTrace) {
		g.inner.Trace(msg, fields)
	}
}

// With keeps the gate: the fields go to the inner adapter, the level check
// only needs the handler, which With does not change.
func (g gated) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return gated{inner: g.inner.With(fields), log: g.log, levels: g.levels}
}
