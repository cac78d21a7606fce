package config

import (
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

func TestEnvReportsEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	e := FromMap(map[string]string{"PORT": "eighty", "TIMEOUT": "5", "NAME": "  shop ", "OK": "true", "N": "7"})
	if got := e.String("NAME", "x"); got != "shop" {
		t.Errorf("String = %q", got)
	}
	if got := e.String("MISSING", "def"); got != "def" {
		t.Errorf("default = %q", got)
	}
	if got := e.Int("N", 1); got != 7 {
		t.Errorf("Int = %d", got)
	}
	if !e.Bool("OK", false) {
		t.Error("Bool")
	}
	e.Int("PORT", 80)
	e.Duration("TIMEOUT", time.Second)
	e.Required("DATABASE_URL")
	err := e.Err()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"PORT", "TIMEOUT", "DATABASE_URL: required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if FromMap(nil).Err() != nil {
		t.Error("empty env has an error")
	}
}

func TestSecretFromFile(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/pw"
	if err := os.WriteFile(path, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := FromMap(map[string]string{"ADMIN_PASSWORD_FILE": path, "A": "x", "A_FILE": path, "LOG_LEVEL": "debug"})
	if got := e.Secret("ADMIN_PASSWORD", ""); got != "s3cret" {
		t.Errorf("secret %q", got)
	}
	if e.LogLevel("LOG_LEVEL", slog.LevelInfo) != slog.LevelDebug {
		t.Error("log level")
	}
	if e.Err() != nil {
		t.Fatal(e.Err())
	}
	e.Secret("A", "")
	if e.Err() == nil {
		t.Error("both A and A_FILE accepted")
	}
}
