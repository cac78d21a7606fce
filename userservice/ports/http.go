// Package ports exposes userservice over HTTP.
package ports

import (
	_ "embed"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/httpx"
	"github.com/sagabox/sagabox/internal/platform/ratelimit"
	"github.com/sagabox/sagabox/userservice/adapters"
	"github.com/sagabox/sagabox/userservice/app"
	"github.com/sagabox/sagabox/userservice/domain"
)

// OpenAPI is the API's OpenAPI 3.1 document, served at /openapi.json.
//
//go:embed openapi.json
var OpenAPI []byte

// HTTPConfig is what the HTTP port needs.
type HTTPConfig struct {
	App      *app.Application
	Verifier auth.TokenVerifier
	JWKS     []byte // the issuer's key set, served at /.well-known/jwks.json
	Health   *httpx.Health
	Metrics  *httpx.Metrics
	Logger   *slog.Logger
	// LoginPerAccount limits login attempts per email and client address;
	// LoginPerClient limits them per client address over all emails
	// (credential stuffing).
	LoginPerAccount *ratelimit.Limiter
	LoginPerClient  *ratelimit.Limiter
	// SignupPerClient limits sign-ups per client address: each account
	// comes with starting credit and costs a password hash.
	SignupPerClient *ratelimit.Limiter
}

// NewHTTP returns the service's whole HTTP handler.
func NewHTTP(cfg HTTPConfig) http.Handler {
	h := &handlers{cfg: cfg, log: cfg.Logger}
	mux := http.NewServeMux()
	handle := func(pattern string, fn httpx.HandlerFunc) { mux.Handle(pattern, httpx.Handle(h.log, fn)) }
	handle("POST /signup", h.signUp)
	handle("POST /login", h.login)
	mux.Handle("GET /users/{id}", auth.Authenticate(cfg.Verifier, httpx.Handle(h.log, h.getUser)))
	mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(cfg.JWKS)
	})
	mux.Handle("GET /openapi.json", httpx.OpenAPI(OpenAPI))
	mux.Handle("GET /metrics", cfg.Metrics.Handler())
	cfg.Health.Register(mux)
	return httpx.Middleware(h.log, cfg.Metrics, httpx.JSONErrors(mux))
}

type handlers struct {
	cfg HTTPConfig
	log *slog.Logger
}

// userJSON is a user as the API shows it.
type userJSON struct {
	ID          uuid.UUID `json:"id"`
	Email       string    `json:"email"`
	Name        string    `json:"name"`
	Role        string    `json:"role"`
	CreditCents int64     `json:"creditCents"`
	CreatedAt   time.Time `json:"createdAt"`
}

func toJSON(u *domain.User) userJSON {
	return userJSON{ID: u.ID, Email: u.Email, Name: u.Name, Role: u.Role, CreditCents: u.CreditCents, CreatedAt: u.CreatedAt.UTC()}
}

func (h *handlers) signUp(w http.ResponseWriter, r *http.Request) error {
	// Before anything else: a limited sign-up must cost us nothing.
	if err := limit(w, h.cfg.SignupPerClient, clientAddr(r), "too_many_signups", "too many sign-ups from your address"); err != nil {
		return err
	}
	var req struct {
		Email    string `json:"email"`
		Password string `json:"password"`
		Name     string `json:"name"`
	}
	if err := httpx.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	u, err := h.cfg.App.SignUp(r.Context(), app.SignUp{Email: req.Email, Password: req.Password, Name: req.Name})
	if errors.Is(err, adapters.ErrBusy) {
		w.Header().Set("Retry-After", "1")
	}
	if err != nil {
		return mapError(err)
	}
	w.Header().Set("Location", "/users/"+u.ID.String())
	httpx.WriteJSON(w, http.StatusCreated, toJSON(u))
	return nil
}

func (h *handlers) login(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}
	if err := httpx.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Email == "" || req.Password == "" {
		return httpx.BadRequest("validation_failed", "email and password are required")
	}
	// Rate limit before hashing: limited attempts must cost us nothing.
	client := clientAddr(r)
	account := domain.CanonicalEmail(req.Email) + "|" + client
	for _, l := range []struct {
		lim *ratelimit.Limiter
		key string
	}{{h.cfg.LoginPerClient, client}, {h.cfg.LoginPerAccount, account}} {
		if err := limit(w, l.lim, l.key, "too_many_attempts", "too many login attempts"); err != nil {
			return err
		}
	}
	tok, err := h.cfg.App.Login(r.Context(), req.Email, req.Password)
	if err != nil {
		return mapError(err)
	}
	w.Header().Set("Cache-Control", "no-store")
	httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"token": tok.Token, "tokenType": "Bearer", "expiresAt": tok.ExpiresAt.UTC(), "userId": tok.UserID,
	})
	return nil
}

func (h *handlers) getUser(w http.ResponseWriter, r *http.Request) error {
	caller, _ := auth.CallerFrom(r.Context())
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return httpx.NotFound("user_not_found", "user not found")
	}
	viewer, _ := uuid.Parse(caller.UserID)
	u, err := h.cfg.App.GetUser(r.Context(), viewer, caller.Role, id)
	if err != nil {
		return mapError(err)
	}
	httpx.WriteJSON(w, http.StatusOK, toJSON(u))
	return nil
}

// limit answers 429 code with Retry-After when lim refuses key (nil lim:
// no limit).
func limit(w http.ResponseWriter, lim *ratelimit.Limiter, key, code, what string) error {
	if lim == nil {
		return nil
	}
	ok, wait := lim.Allow(key)
	if ok {
		return nil
	}
	secs := int(math.Ceil(wait.Seconds()))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	return httpx.NewError(http.StatusTooManyRequests, code, "%s: try again in %d seconds", what, secs).
		With("retryAfterSeconds", secs)
}

// clientAddr is the client's IP address as this server sees it. Behind a
// proxy that is the proxy's: put the limiter at the edge, or teach this
// function the proxy's forwarding header.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func mapError(err error) error {
	var ve *domain.ValidationError
	switch {
	case errors.As(err, &ve):
		return httpx.BadRequest("validation_failed", "%s %s", ve.Field, ve.Message).With("field", ve.Field)
	case errors.Is(err, domain.ErrEmailTaken):
		return httpx.Conflict("email_taken", "a user with this email already exists")
	case errors.Is(err, domain.ErrUserNotFound):
		return httpx.NotFound("user_not_found", "user not found")
	case errors.Is(err, adapters.ErrBusy):
		return &httpx.Error{Status: http.StatusServiceUnavailable, Code: "busy",
			Message: "too many sign-ups at once: try again in a second", Fields: map[string]any{"retryAfterSeconds": 1}, Err: err}
	case errors.Is(err, app.ErrInvalidCredentials):
		w := httpx.Unauthorized("invalid_credentials", "invalid email or password")
		return w
	}
	return err
}
