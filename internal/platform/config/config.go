// Package config reads a service's configuration from environment variables.
//
// Each service declares a documented Config struct (every field says its
// variable and default) and fills it with an Env, which collects every
// missing or malformed variable so that start-up fails once, naming all of
// them, instead of once per restart.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
)

// Env reads variables through Lookup and remembers what was wrong.
type Env struct {
	lookup func(string) (string, bool)
	errs   []error
}

// FromOS reads the process environment.
func FromOS() *Env { return &Env{lookup: os.LookupEnv} }

// FromMap reads m, for tests.
func FromMap(m map[string]string) *Env {
	return &Env{lookup: func(k string) (string, bool) { v, ok := m[k]; return v, ok }}
}

func (e *Env) get(key string) (string, bool) {
	v, ok := e.lookup(key)
	v = strings.TrimSpace(v)
	return v, ok && v != ""
}

func (e *Env) fail(key, format string, args ...any) {
	e.errs = append(e.errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

// String returns the variable, or def when it is unset or empty.
func (e *Env) String(key, def string) string {
	if v, ok := e.get(key); ok {
		return v
	}
	return def
}

// Required returns the variable and records an error when it is unset.
func (e *Env) Required(key string) string {
	v, ok := e.get(key)
	if !ok {
		e.fail(key, "required")
	}
	return v
}

// Secret returns the variable KEY, or the contents of the file named by
// KEY_FILE (Docker and Kubernetes secrets), or def. Setting both is an
// error.
func (e *Env) Secret(key, def string) string {
	v, ok := e.get(key)
	path, fileOK := e.get(key + "_FILE")
	switch {
	case ok && fileOK:
		e.fail(key, "set %s or %s_FILE, not both", key, key)
		return def
	case ok:
		return v
	case fileOK:
		b, err := os.ReadFile(path)
		if err != nil {
			e.fail(key+"_FILE", "%v", err)
			return def
		}
		return strings.TrimSpace(string(b))
	}
	return def
}

// LogLevel returns the variable as a slog level (debug, info, warn,
// error), or def.
func (e *Env) LogLevel(key string, def slog.Level) slog.Level {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		e.fail(key, "%q is not one of debug, info, warn, error", v)
		return def
	}
	return l
}

// Int returns the variable as an int, or def.
func (e *Env) Int(key string, def int) int {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		e.fail(key, "%q is not an integer", v)
		return def
	}
	return n
}

// Int64 returns the variable as an int64, or def.
func (e *Env) Int64(key string, def int64) int64 {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		e.fail(key, "%q is not an integer", v)
		return def
	}
	return n
}

// Float returns the variable as a float64, or def.
func (e *Env) Float(key string, def float64) float64 {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		e.fail(key, "%q is not a number", v)
		return def
	}
	return f
}

// Duration returns the variable as a time.Duration ("1m30s"), or def.
func (e *Env) Duration(key string, def time.Duration) time.Duration {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.fail(key, "%q is not a duration like 30s or 5m", v)
		return def
	}
	return d
}

// Bool returns the variable as a bool ("true", "1", "false", "0"), or def.
func (e *Env) Bool(key string, def bool) bool {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.fail(key, "%q is not a boolean", v)
		return def
	}
	return b
}

// List returns the comma-separated variable, or def.
func (e *Env) List(key string, def []string) []string {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Err returns every problem met so far, joined, or nil.
func (e *Env) Err() error {
	if len(e.errs) == 0 {
		return nil
	}
	return fmt.Errorf("config: %w", errors.Join(e.errs...))
}
