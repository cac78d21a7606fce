package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// ErrInvalidConfig means a Config field is missing or bad; the message names
// it.
var ErrInvalidConfig = errors.New("console: invalid config")

// Defaults of Config.
const (
	// DefaultListen is where cmd/sagabox console and the demo listen:
	// loopback only.
	DefaultListen = "127.0.0.1:8090"
	// DefaultRefresh is how often pages refresh themselves.
	DefaultRefresh = 3 * time.Second
	// DefaultPageSize is how many sagas a page of the list shows.
	DefaultPageSize = 50
	// DefaultOperator is the actor recorded for an action when the
	// operator gives no name.
	DefaultOperator = "console"
	// TokenEnv is the environment variable cmd/sagabox console reads the
	// operator token from.
	TokenEnv = "SAGABOX_CONSOLE_TOKEN"
)

// Config configures a Console.
type Config struct {
	// Pool is the service database whose sagas and outbox the console
	// shows. Required.
	Pool *pgxpool.Pool
	// Logger gets every operator action (who, what, why) and the errors.
	// Defaults to discarding.
	Logger *slog.Logger
	// AuthToken, when set, is required on every request: as a bearer
	// token (Authorization: Bearer ...) or through the login page, which
	// keeps it in a cookie. Empty: no authentication, for a console on
	// loopback only (see CheckListen).
	AuthToken string
	// Operator is the actor recorded with an action when the operator
	// leaves the name field empty. Defaults to DefaultOperator.
	Operator string
	// Definitions are optional: the diagram of a saga uses its definition
	// from here, or else the one its orchestrator recorded in the database
	// when it started, or else the steps its history shows.
	Definitions []saga.AnyDefinition
	// Prefix is the path the console is mounted under ("/console"), with
	// http.StripPrefix; links start with it. Defaults to "".
	Prefix string
	// Refresh is how often pages refresh themselves. Defaults to
	// DefaultRefresh.
	Refresh time.Duration
	// PageSize defaults to DefaultPageSize.
	PageSize int
	// Now defaults to time.Now (tests).
	Now func() time.Time
}

// WithDefaults returns a copy of c with every unset field defaulted.
func (c Config) WithDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Operator == "" {
		c.Operator = DefaultOperator
	}
	if c.Refresh <= 0 {
		c.Refresh = DefaultRefresh
	}
	if c.PageSize <= 0 {
		c.PageSize = DefaultPageSize
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Prefix = strings.TrimRight(c.Prefix, "/")
	return c
}

func (c Config) validate() error {
	if c.Pool == nil {
		return fmt.Errorf("%w: Pool is required", ErrInvalidConfig)
	}
	if c.Prefix != "" && !strings.HasPrefix(c.Prefix, "/") {
		return fmt.Errorf("%w: Prefix %q must start with /", ErrInvalidConfig, c.Prefix)
	}
	if c.PageSize > 1000 {
		return fmt.Errorf("%w: PageSize %d is over 1000", ErrInvalidConfig, c.PageSize)
	}
	return nil
}

// Console is the operator console, an http.Handler over one service
// database. Mount it as is, or under a prefix with http.StripPrefix and
// Config.Prefix. Run, optional, samples the outbox's publish rate in the
// background; without it the outbox page samples when it is shown.
type Console struct {
	cfg    Config
	log    *slog.Logger
	sagas  *saga.Admin
	outbox *outbox.Admin
	mux    *http.ServeMux
	key    []byte // CSRF tokens are HMACs with it

	mu      sync.Mutex
	samples []sample // the outbox's delete counter over time
}

// New checks cfg and returns a console. It does no I/O.
func New(cfg Config) (*Console, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, log: cfg.Logger, sagas: saga.NewAdmin(cfg.Pool, cfg.Definitions...),
		outbox: outbox.NewAdmin(cfg.Pool), mux: http.NewServeMux(), key: make([]byte, 32)}
	_, _ = rand.Read(c.key)
	c.routes()
	return c, nil
}

// Serve serves the console on l until ctx is done, sampling the publish
// rate (Run) meanwhile, the way `sagabox console` and the demo run it. Then
// it shuts the server down, giving requests in flight 5 s, and returns nil;
// it returns an error only when the server fails.
func (c *Console) Serve(ctx context.Context, l net.Listener) error {
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	srv := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	sampled := make(chan error, 1)
	go func() { sampled <- c.Run(runCtx) }()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	stop()
	<-sampled
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Run samples the outbox's publish rate every few seconds until ctx is
// done, so the chart has a history when an operator opens the page. It
// returns nil when ctx is done.
func (c *Console) Run(ctx context.Context) error {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		if err := c.sample(ctx); err != nil && ctx.Err() == nil {
			c.log.WarnContext(ctx, "console: sample outbox", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// CheckListen refuses to serve on anything but loopback without a token:
// what cmd/sagabox console and the demo call before listening on addr.
func CheckListen(addr, token string) error {
	if token != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("console: listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("console: refusing to listen on %q without an operator token: it is not loopback; set -auth-token or %s", addr, TokenEnv)
}

func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		// A bug, not the operator's input: say so, and log it.
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			c.log.ErrorContext(r.Context(), "console: bug", "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			http.Error(w, "console: internal error (it is logged as \"console: bug\")", http.StatusInternalServerError)
		}
	}()
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")
	if c.cfg.AuthToken != "" && r.URL.Path != "/login" && !c.authenticated(r) {
		if r.Method == http.MethodGet && !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			http.Redirect(w, r, c.cfg.Prefix+"/login?next="+urlQueryEscape(c.cfg.Prefix+r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		c.fail(w, r, http.StatusUnauthorized, "Not signed in", "This console needs the operator token: send it as Authorization: Bearer, or sign in at "+c.cfg.Prefix+"/login.")
		return
	}
	c.mux.ServeHTTP(w, r)
}

const (
	tokenCookie    = "sagabox_console_auth"
	csrfCookie     = "sagabox_console_csrf"
	operatorCookie = "sagabox_console_operator"
)

// authenticated checks the bearer token or the login cookie in constant
// time. The cookie holds an HMAC of the token, not the token.
func (c *Console) authenticated(r *http.Request) bool {
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		return subtle.ConstantTimeCompare([]byte(strings.TrimPrefix(h, "Bearer ")), []byte(c.cfg.AuthToken)) == 1
	}
	ck, err := r.Cookie(tokenCookie)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(ck.Value), []byte(c.mac("auth", c.cfg.AuthToken))) == 1
}

func (c *Console) mac(purpose, v string) string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(purpose + "\x00" + v))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// csrfToken returns the token forms carry: an HMAC of the browser's random
// CSRF cookie, set here when missing. A POST must carry the token matching
// its cookie (checkCSRF): another site can make the browser send the
// cookie, but cannot read it to compute the token.
func (c *Console) csrfToken(w http.ResponseWriter, r *http.Request) string {
	v := ""
	if ck, err := r.Cookie(csrfCookie); err == nil && len(ck.Value) >= 16 {
		v = ck.Value
	} else {
		v = rand.Text()
		http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: v, Path: c.cookiePath(), HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
		r.AddCookie(&http.Cookie{Name: csrfCookie, Value: v})
	}
	return c.mac("csrf", v)
}

func (c *Console) checkCSRF(r *http.Request) bool {
	ck, err := r.Cookie(csrfCookie)
	if err != nil || ck.Value == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(c.mac("csrf", ck.Value))) == 1
}

func (c *Console) cookiePath() string {
	if c.cfg.Prefix == "" {
		return "/"
	}
	return c.cfg.Prefix
}

func (c *Console) routes() {
	m := c.mux
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, c.cfg.Prefix+"/sagas", http.StatusSeeOther)
	})
	m.HandleFunc("GET /login", c.loginPage)
	m.HandleFunc("POST /login", c.login)
	m.HandleFunc("GET /sagas", c.sagasPage)
	m.HandleFunc("GET /sagas/{id}", c.sagaPage)
	m.HandleFunc("GET /sagas/{id}/{action}", c.sagaConfirm)
	m.HandleFunc("POST /sagas/{id}/{action}", c.sagaAction)
	m.HandleFunc("GET /outbox", c.outboxPage)
	m.HandleFunc("GET /outbox/{id}/{action}", c.outboxConfirm)
	m.HandleFunc("POST /outbox/{id}/{action}", c.outboxAction)
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(staticFS)))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, http.StatusNotFound, "No such page", fmt.Sprintf("%s %s is not a page of the console.", r.Method, r.URL.Path))
	})
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if c.cfg.AuthToken == "" {
		http.Redirect(w, r, c.cfg.Prefix+"/sagas", http.StatusSeeOther)
		return
	}
	c.render(w, r, http.StatusOK, "login", page{Title: "Sign in", InlineCSS: inlineCSS, Data: map[string]string{"Next": safeNext(c.cfg.Prefix, r.URL.Query().Get("next"))}})
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if c.cfg.AuthToken == "" {
		http.Redirect(w, r, c.cfg.Prefix+"/sagas", http.StatusSeeOther)
		return
	}
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue("token")), []byte(c.cfg.AuthToken)) != 1 {
		c.log.WarnContext(r.Context(), "console: sign-in refused", "remote_addr", r.RemoteAddr)
		c.render(w, r, http.StatusUnauthorized, "login", page{Title: "Sign in", InlineCSS: inlineCSS, Error: "That is not the operator token.",
			Data: map[string]string{"Next": safeNext(c.cfg.Prefix, r.PostFormValue("next"))}})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: c.mac("auth", c.cfg.AuthToken), Path: c.cookiePath(),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, safeNext(c.cfg.Prefix, r.PostFormValue("next")), http.StatusSeeOther)
}

// safeNext keeps a redirect inside the console.
func safeNext(prefix, next string) string {
	if !strings.HasPrefix(next, prefix+"/") || strings.HasPrefix(next, "//") || strings.Contains(next, "\\") {
		return prefix + "/sagas"
	}
	return next
}

// actor is who an action is recorded for: the name the operator typed (kept
// in a cookie for the next action), or Config.Operator, with the address.
func (c *Console) actor(w http.ResponseWriter, r *http.Request) string {
	name := strings.TrimSpace(r.PostFormValue("operator"))
	if len(name) > 100 {
		name = name[:100]
	}
	if name != "" {
		http.SetCookie(w, &http.Cookie{Name: operatorCookie, Value: urlQueryEscape(name), Path: c.cookiePath(), HttpOnly: true,
			SameSite: http.SameSiteStrictMode, MaxAge: 365 * 24 * 3600, Secure: r.TLS != nil})
	} else {
		name = c.cfg.Operator
	}
	return name + " (console)"
}

func (c *Console) operatorName(r *http.Request) string {
	if ck, err := r.Cookie(operatorCookie); err == nil {
		if v, err := urlQueryUnescape(ck.Value); err == nil {
			return v
		}
	}
	return ""
}
