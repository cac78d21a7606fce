package wmlog_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/sagabox/sagabox/internal/wmlog"
)

// Each level reaches the slog handler when, and only when, the handler
// takes it (watermill's Info as slog's Debug), and With keeps fields and
// gate alike.
func TestLevelsAreMappedAndGated(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		want  []string
	}{
		{slog.LevelError, []string{"error-line"}},
		{slog.LevelInfo, []string{"error-line"}},
		{slog.LevelDebug, []string{"error-line", "info-line", "debug-line"}},
		{watermill.LevelTrace, []string{"error-line", "info-line", "debug-line", "trace-line"}},
	} {
		var buf bytes.Buffer
		log := wmlog.New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tc.level}))).
			With(watermill.LogFields{"component": "test"})
		log.Error("error-line", errors.New("boom"), nil)
		log.Info("info-line", watermill.LogFields{"k": 1})
		log.Debug("debug-line", nil)
		log.Trace("trace-line", nil)
		out := buf.String()
		for _, line := range []string{"error-line", "info-line", "debug-line", "trace-line"} {
			want := false
			for _, w := range tc.want {
				want = want || w == line
			}
			if got := strings.Contains(out, line); got != want {
				t.Errorf("handler level %v: %s logged %v, want %v\n%s", tc.level, line, got, want, out)
			}
		}
		if !strings.Contains(out, "component=test") {
			t.Errorf("With lost its fields:\n%s", out)
		}
	}
}
