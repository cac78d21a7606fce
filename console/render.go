package console

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagabox/sagabox/saga"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticRoot embed.FS

var staticFS = mustSub(staticRoot, "static")

func mustSub(f fs.FS, dir string) fs.FS {
	s, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return s
}

var funcs = template.FuncMap{
	"age":       func(now, t time.Time) string { return shortDuration(now.Sub(t)) },
	"dur":       shortDuration,
	"clock":     func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000") },
	"short":     func(s string) string { return shorten(s, 120) },
	"shortID":   func(s string) string { return s[:min(8, len(s))] },
	"lower":     strings.ToLower,
	"hasStatus": func(list []saga.Status, s saga.Status) bool { return slices.Contains(list, s) },
	"jsonPretty": func(b []byte) string {
		var out bytes.Buffer
		if json.Indent(&out, b, "", "  ") != nil {
			return string(b)
		}
		return out.String()
	},
}

var inlineCSS = func() template.CSS {
	b, err := fs.ReadFile(staticFS, "console.css")
	if err != nil {
		panic(err)
	}
	return template.CSS(b)
}()

var templates = template.Must(template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html"))

// page is what every template gets.
type page struct {
	Title   string
	Nav     string // which tab is active
	Prefix  string
	Live    bool // refresh the page's #live section every Refresh
	Refresh int  // milliseconds
	Auth    bool // the console has a token: show sign-in hints
	CSRF    string
	Error   string
	Notice  string
	Now     time.Time
	Data    any
	// InlineCSS is the stylesheet, for the sign-in page: everything else,
	// the static files included, needs the token.
	InlineCSS template.CSS
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	p.Prefix, p.Refresh, p.Auth, p.Now = c.cfg.Prefix, int(c.cfg.Refresh/time.Millisecond), c.cfg.AuthToken != "", c.cfg.Now()
	p.CSRF = c.csrfToken(w, r)
	if p.Notice == "" {
		p.Notice = r.URL.Query().Get("notice")
		if len(p.Notice) > 300 {
			p.Notice = p.Notice[:300]
		}
	}
	var buf bytes.Buffer
	if err := templates.ExecuteTemplate(&buf, name, p); err != nil {
		c.log.ErrorContext(r.Context(), "console: render", "template", name, "error", err)
		http.Error(w, "console: the page could not be drawn: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// fail shows a clear message page: bad input is a 4xx, never a 500.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, status int, title, msg string) {
	c.render(w, r, status, "error", page{Title: title, Error: msg, Data: status})
}

// dbFail is for the database failing (not the operator's input): 503.
func (c *Console) dbFail(w http.ResponseWriter, r *http.Request, err error) {
	c.log.ErrorContext(r.Context(), "console: database", "path", r.URL.Path, "error", err)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42P01" { // undefined_table
		c.fail(w, r, http.StatusServiceUnavailable, "No sagabox tables here",
			"This database has no sagabox tables ("+pgErr.Message+"): point the console at a service's database, or run sagabox migrate.")
		return
	}
	c.fail(w, r, http.StatusServiceUnavailable, "Database unavailable", "The console could not read the database: "+err.Error()+". It retries on the next refresh.")
}

func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func shorten(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func urlQueryEscape(s string) string            { return url.QueryEscape(s) }
func urlQueryUnescape(s string) (string, error) { return url.QueryUnescape(s) }
