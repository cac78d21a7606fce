package auth

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Verification errors. Verify wraps one of them.
var (
	// ErrInvalidToken: malformed, wrong algorithm, bad signature, wrong
	// iss/aud, missing claims, unknown kid. The client must log in again.
	ErrInvalidToken = errors.New("auth: invalid token")
	// ErrExpiredToken: the token was valid but its exp has passed.
	ErrExpiredToken = errors.New("auth: token expired")
	// ErrKeysUnavailable: the key set could not be fetched, so no token can
	// be checked. A server-side problem (503), not the client's.
	ErrKeysUnavailable = errors.New("auth: signing keys unavailable")
)

// Verifier defaults.
const (
	DefaultRefreshInterval    = 10 * time.Minute
	DefaultMinRefetchInterval = 5 * time.Second
	DefaultLeeway             = 30 * time.Second
	maxJWKSBytes              = 1 << 20
)

// KeySource returns a JWKS document.
type KeySource func(ctx context.Context) ([]byte, error)

// JWKSTimeout bounds a fetch of the key set by FromURL's default client.
const JWKSTimeout = 5 * time.Second

// FromURL fetches the JWKS document at url with client (nil: a client with
// a JWKSTimeout timeout).
func FromURL(url string, client *http.Client) KeySource {
	if client == nil {
		client = &http.Client{Timeout: JWKSTimeout}
	}
	return func(ctx context.Context) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes))
	}
}

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// Keys gives the issuer's JWKS document: FromURL(jwksURL, nil) in
	// another service, or the Issuer's own document in userservice.
	// Required.
	Keys KeySource
	// Issuer is the required iss claim. Required.
	Issuer string
	// Audience is the aud the token must include. Required.
	Audience string
	// RefreshInterval: keys older than this are refetched on next use.
	// Defaults to DefaultRefreshInterval.
	RefreshInterval time.Duration
	// MinRefetchInterval: a token with an unknown kid triggers a refetch at
	// most this often, so garbage tokens cannot hammer the issuer. Defaults
	// to DefaultMinRefetchInterval.
	MinRefetchInterval time.Duration
	// Leeway tolerates clock skew on exp and nbf. Defaults to DefaultLeeway.
	Leeway time.Duration
	// Now defaults to time.Now.
	Now func() time.Time
}

// Verifier checks access tokens against the issuer's published keys. It is
// safe for concurrent use.
type Verifier struct {
	cfg    VerifierConfig
	parser *jwt.Parser

	mu          sync.Mutex // guards the fields below and serialises fetches
	keys        map[string]ed25519.PublicKey
	fetchedAt   time.Time
	lastAttempt time.Time
}

// NewVerifier checks cfg. Keys are fetched on first use.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.Keys == nil || cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("auth: VerifierConfig.Keys, Issuer and Audience are required")
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = DefaultRefreshInterval
	}
	if cfg.MinRefetchInterval <= 0 {
		cfg.MinRefetchInterval = DefaultMinRefetchInterval
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = DefaultLeeway
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{
		cfg: cfg,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{Algorithm}), // pinned: no "none", no HS256 with the public key
			jwt.WithIssuer(cfg.Issuer),
			jwt.WithAudience(cfg.Audience),
			jwt.WithExpirationRequired(),
			jwt.WithLeeway(cfg.Leeway),
			jwt.WithTimeFunc(cfg.Now),
			jwt.WithStrictDecoding(),
		),
	}, nil
}

// Verify checks token and returns its claims. The error wraps
// ErrInvalidToken, ErrExpiredToken or ErrKeysUnavailable.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	var keyErr error
	claims := &Claims{}
	_, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			return nil, errors.New("token has no kid")
		}
		k, err := v.key(ctx, kid)
		if err != nil {
			keyErr = err
		}
		return k, err
	})
	switch {
	case err == nil:
	case errors.Is(keyErr, ErrKeysUnavailable):
		return nil, keyErr
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, fmt.Errorf("%w: %v", ErrExpiredToken, err)
	default:
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if claims.Subject == "" {
		return nil, fmt.Errorf("%w: no sub claim", ErrInvalidToken)
	}
	if claims.Role != RoleUser && claims.Role != RoleAdmin {
		return nil, fmt.Errorf("%w: unknown role %q", ErrInvalidToken, claims.Role)
	}
	return claims, nil
}

// key returns the public key kid, fetching the key set when it is stale or
// does not have kid (at most once per MinRefetchInterval).
func (v *Verifier) key(ctx context.Context, kid string) (ed25519.PublicKey, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.cfg.Now()
	k, ok := v.keys[kid]
	stale := now.Sub(v.fetchedAt) > v.cfg.RefreshInterval
	if ok && !stale {
		return k, nil
	}
	if !v.lastAttempt.IsZero() && now.Sub(v.lastAttempt) < v.cfg.MinRefetchInterval {
		switch {
		case ok:
			return k, nil
		case v.keys == nil:
			return nil, fmt.Errorf("%w: the last fetch failed", ErrKeysUnavailable)
		}
		return nil, fmt.Errorf("unknown kid %q", kid)
	}
	v.lastAttempt = now
	keys, err := v.fetch(ctx)
	if err != nil {
		if v.keys == nil {
			return nil, fmt.Errorf("%w: %v", ErrKeysUnavailable, err)
		}
		// Keep serving with the keys we have while the issuer is away.
		if ok {
			return k, nil
		}
		return nil, fmt.Errorf("unknown kid %q (refetch failed: %v)", kid, err)
	}
	v.keys, v.fetchedAt = keys, now
	if k, ok := keys[kid]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("unknown kid %q", kid)
}

func (v *Verifier) fetch(ctx context.Context) (map[string]ed25519.PublicKey, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	doc, err := v.cfg.Keys(ctx)
	if err != nil {
		return nil, err
	}
	return ParseJWKS(doc)
}

// ParseJWKS returns the Ed25519 signing keys of a JWKS document by kid,
// skipping keys of other types.
func ParseJWKS(doc []byte) (map[string]ed25519.PublicKey, error) {
	var set JWKS
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	out := map[string]ed25519.PublicKey{}
	for _, k := range set.Keys {
		if k.Kty != "OKP" || k.Crv != "Ed25519" || k.Kid == "" || (k.Alg != "" && k.Alg != Algorithm) || (k.Use != "" && k.Use != "sig") {
			continue
		}
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			continue
		}
		out[k.Kid] = ed25519.PublicKey(x)
	}
	if len(out) == 0 {
		return nil, errors.New("jwks: no Ed25519 signing key")
	}
	return out, nil
}
