package auth

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/sagabox/sagabox/internal/platform/httpx"
)

// Caller is the authenticated user of a request.
type Caller struct {
	UserID string
	Role   string
}

// IsAdmin reports whether the caller has the admin role.
func (c Caller) IsAdmin() bool { return c.Role == RoleAdmin }

type callerKey struct{}

// WithCaller returns ctx carrying c.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller Authenticate stored in ctx.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// TokenVerifier is what Authenticate needs; *Verifier implements it.
type TokenVerifier interface {
	Verify(ctx context.Context, token string) (*Claims, error)
}

// Authenticate requires a valid "Authorization: Bearer <token>" header and
// stores the Caller in the request context. With roles, the caller must also
// have one of them. Answers: 401 missing_token, invalid_token or
// token_expired; 403 forbidden for a wrong role; 503 when the issuer's keys
// cannot be fetched.
func Authenticate(v TokenVerifier, next http.Handler, roles ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		scheme, token, found := strings.Cut(h, " ")
		if h == "" {
			httpx.WriteError(w, r, nil, httpx.Unauthorized("missing_token", "an Authorization: Bearer token is required"))
			return
		}
		if !found || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
			httpx.WriteError(w, r, nil, httpx.Unauthorized("invalid_token", "the Authorization header must be \"Bearer <token>\""))
			return
		}
		claims, err := v.Verify(r.Context(), strings.TrimSpace(token))
		switch {
		case err == nil:
		case errors.Is(err, ErrExpiredToken):
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="the token expired"`)
			httpx.WriteError(w, r, nil, httpx.Unauthorized("token_expired", "the token expired: log in again"))
			return
		case errors.Is(err, ErrKeysUnavailable):
			httpx.WriteError(w, r, nil, httpx.NewError(http.StatusServiceUnavailable, "auth_unavailable",
				"tokens cannot be checked right now: try again later"))
			return
		default:
			httpx.WriteError(w, r, nil, httpx.Unauthorized("invalid_token", "the token is not valid"))
			return
		}
		c := Caller{UserID: claims.Subject, Role: claims.Role}
		if len(roles) > 0 && !slices.Contains(roles, c.Role) {
			httpx.WriteError(w, r, nil, httpx.Forbidden("forbidden", "this needs the %s role", strings.Join(roles, " or ")))
			return
		}
		next.ServeHTTP(w, r.WithContext(WithCaller(r.Context(), c)))
	})
}
