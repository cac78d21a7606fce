package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	testIss = "sagabox-userservice"
	testAud = "sagabox-shop"
)

type bundle struct {
	key      ed25519.PrivateKey
	issuer   *Issuer
	verifier *Verifier
	fetches  *atomic.Int64
	mu       *sync.Mutex
	jwks     *[]byte // what the JWKS endpoint serves
	down     *atomic.Bool
	skew     *atomic.Int64 // nanoseconds added to the verifier's clock
}

// setup starts a JWKS endpoint over HTTP serving the issuer's keys and a
// verifier reading it, as another service would.
func setup(t *testing.T) bundle {
	t.Helper()
	b := bundle{key: GenerateKey(), fetches: &atomic.Int64{}, mu: &sync.Mutex{}, down: &atomic.Bool{},
		skew: &atomic.Int64{}}
	var err error
	b.issuer, err = NewIssuer(IssuerConfig{Key: b.key, Issuer: testIss, Audience: testAud})
	if err != nil {
		t.Fatal(err)
	}
	doc := b.issuer.JWKS()
	b.jwks = &doc
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.fetches.Add(1)
		if b.down.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		_, _ = w.Write(*b.jwks)
	}))
	t.Cleanup(srv.Close)
	b.verifier, err = NewVerifier(VerifierConfig{Keys: FromURL(srv.URL, srv.Client()), Issuer: testIss, Audience: testAud,
		MinRefetchInterval: time.Minute, Now: func() time.Time { return time.Now().Add(time.Duration(b.skew.Load())) }})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sign signs arbitrary claims with key and kid, to forge tokens.
func sign(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func goodClaims() jwt.MapClaims {
	return jwt.MapClaims{"sub": "u1", "role": RoleUser, "iss": testIss, "aud": testAud,
		"exp": time.Now().Add(time.Minute).Unix(), "iat": time.Now().Unix()}
}

func TestIssuedTokenVerifiesThroughJWKS(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok, exp, err := b.issuer.Issue("user-1", RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if time.Until(exp) <= 0 || time.Until(exp) > DefaultTokenTTL {
		t.Errorf("exp %s", exp)
	}
	c, err := b.verifier.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "user-1" || c.Role != RoleAdmin || c.Issuer != testIss {
		t.Errorf("claims %+v", c)
	}
	// The header names the key and the pinned algorithm.
	parts := strings.Split(tok, ".")
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var h map[string]string
	_ = json.Unmarshal(hdr, &h)
	if h["alg"] != "EdDSA" || h["kid"] != b.issuer.KeyID() || h["kid"] == "" {
		t.Errorf("header %s", hdr)
	}
	// Many verifications, one fetch.
	for range 10 {
		if _, err := b.verifier.Verify(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := b.fetches.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1", n)
	}
}

// PITFALLS.md 24: every forged or incomplete token is refused.
func TestForgedAndIncompleteTokensAreRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	kid := b.issuer.KeyID()
	pub := b.key.Public().(ed25519.PublicKey)
	without := func(claim string) jwt.MapClaims { c := goodClaims(); delete(c, claim); return c }
	with := func(claim string, v any) jwt.MapClaims { c := goodClaims(); c[claim] = v; return c }
	otherKey := GenerateKey()

	valid := sign(t, jwt.SigningMethodEdDSA, b.key, kid, goodClaims())
	if _, err := b.verifier.Verify(context.Background(), valid); err != nil {
		t.Fatalf("the control token is refused, so the cases below prove nothing: %v", err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(pub))})
	cases := map[string]string{
		"alg none":                    sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, kid, goodClaims()),
		"HS256 keyed with public key": sign(t, jwt.SigningMethodHS256, []byte(pub), kid, goodClaims()),
		"HS256 keyed with public PEM": sign(t, jwt.SigningMethodHS256, pubPEM, kid, goodClaims()),
		"no exp":                      sign(t, jwt.SigningMethodEdDSA, b.key, kid, without("exp")),
		"no iss":                      sign(t, jwt.SigningMethodEdDSA, b.key, kid, without("iss")),
		"no aud":                      sign(t, jwt.SigningMethodEdDSA, b.key, kid, without("aud")),
		"no sub":                      sign(t, jwt.SigningMethodEdDSA, b.key, kid, without("sub")),
		"no role":                     sign(t, jwt.SigningMethodEdDSA, b.key, kid, without("role")),
		"unknown role":                sign(t, jwt.SigningMethodEdDSA, b.key, kid, with("role", "root")),
		"wrong iss":                   sign(t, jwt.SigningMethodEdDSA, b.key, kid, with("iss", "evil")),
		"wrong aud":                   sign(t, jwt.SigningMethodEdDSA, b.key, kid, with("aud", "another-app")),
		"not yet valid":               sign(t, jwt.SigningMethodEdDSA, b.key, kid, with("nbf", time.Now().Add(time.Hour).Unix())),
		"no kid":                      sign(t, jwt.SigningMethodEdDSA, b.key, "", goodClaims()),
		"unknown kid":                 sign(t, jwt.SigningMethodEdDSA, b.key, "nope", goodClaims()),
		"signed by another key":       sign(t, jwt.SigningMethodEdDSA, otherKey, kid, goodClaims()),
		"tampered payload":            tamper(valid),
		"garbage":                     "not.a.token",
	}
	for name, tok := range cases {
		_, err := b.verifier.Verify(context.Background(), tok)
		if !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: got %v, want ErrInvalidToken", name, err)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// tamper changes the role in the payload, keeping the signature.
func tamper(tok string) string {
	p := strings.Split(tok, ".")
	body, _ := base64.RawURLEncoding.DecodeString(p[1])
	body = []byte(strings.Replace(string(body), `"user"`, `"admin"`, 1))
	p[1] = base64.RawURLEncoding.EncodeToString(body)
	return strings.Join(p, ".")
}

func TestExpiredTokenIsReportedAsExpired(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := goodClaims()
	c["exp"] = time.Now().Add(-time.Hour).Unix()
	_, err := b.verifier.Verify(context.Background(), sign(t, jwt.SigningMethodEdDSA, b.key, b.issuer.KeyID(), c))
	if !errors.Is(err, ErrExpiredToken) {
		t.Fatalf("got %v, want ErrExpiredToken", err)
	}
}

// After the issuer rotates its key, a token with the new kid makes the
// verifier refetch once; garbage kids do not make it refetch again within
// MinRefetchInterval.
func TestUnknownKidRefetchesOnceThenIsRateLimited(t *testing.T) {
	t.Parallel()
	b := setup(t)
	old, _, _ := b.issuer.Issue("u1", RoleUser)
	if _, err := b.verifier.Verify(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	newKey := GenerateKey()
	rotated, err := NewIssuer(IssuerConfig{Key: newKey, Issuer: testIss, Audience: testAud,
		RetiredKeys: []ed25519.PublicKey{b.key.Public().(ed25519.PublicKey)}})
	if err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	*b.jwks = rotated.JWKS()
	b.mu.Unlock()
	tok, _, _ := rotated.Issue("u2", RoleUser)
	if _, err := b.verifier.Verify(context.Background(), tok); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("within MinRefetchInterval of the last fetch an unknown kid must not refetch: %v", err)
	}
	b.skew.Store(int64(time.Minute + time.Second))
	if _, err := b.verifier.Verify(context.Background(), tok); err != nil {
		t.Fatalf("token with the rotated key: %v", err)
	}
	if _, err := b.verifier.Verify(context.Background(), old); err != nil {
		t.Fatalf("token signed with the retired key before expiry: %v", err)
	}
	for range 20 {
		bad := sign(t, jwt.SigningMethodEdDSA, newKey, "garbage-kid", goodClaims())
		if _, err := b.verifier.Verify(context.Background(), bad); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("garbage kid: %v", err)
		}
	}
	if n := b.fetches.Load(); n != 2 {
		t.Errorf("JWKS fetched %d times, want 2 (first use, rotation; the garbage kids come within MinRefetchInterval)", n)
	}
}

func TestKeysUnavailableIsNotTheClientsFault(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.down.Store(true)
	tok, _, _ := b.issuer.Issue("u1", RoleUser)
	if _, err := b.verifier.Verify(context.Background(), tok); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("got %v, want ErrKeysUnavailable", err)
	}
}

func TestParsePrivateKey(t *testing.T) {
	t.Parallel()
	k := GenerateKey()
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	fromPEM, err := ParsePrivateKey(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	if err != nil || !fromPEM.Equal(k) {
		t.Fatalf("PEM: %v", err)
	}
	fromSeed, err := ParsePrivateKey(base64.StdEncoding.EncodeToString(k.Seed()))
	if err != nil || !fromSeed.Equal(k) {
		t.Fatalf("seed: %v", err)
	}
	for _, bad := range []string{"", "zz", base64.StdEncoding.EncodeToString([]byte("short")), "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----"} {
		if _, err := ParsePrivateKey(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestAuthenticateMiddleware(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var seen Caller
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen, _ = CallerFrom(r.Context())
		w.WriteHeader(http.StatusNoContent)
	})
	userTok, _, _ := b.issuer.Issue("u1", RoleUser)
	adminTok, _, _ := b.issuer.Issue("a1", RoleAdmin)
	expired := goodClaims()
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	expiredTok := sign(t, jwt.SigningMethodEdDSA, b.key, b.issuer.KeyID(), expired)

	cases := []struct {
		name, header string
		roles        []string
		status       int
		code         string
	}{
		{"no header", "", nil, 401, "missing_token"},
		{"basic auth", "Basic dTpw", nil, 401, "invalid_token"},
		{"bearer without token", "Bearer ", nil, 401, "invalid_token"},
		{"garbage token", "Bearer abc.def.ghi", nil, 401, "invalid_token"},
		{"expired", "Bearer " + expiredTok, nil, 401, "token_expired"},
		{"user on admin route", "Bearer " + userTok, []string{RoleAdmin}, 403, "forbidden"},
		{"user", "Bearer " + userTok, nil, 204, ""},
		{"admin on admin route", "bearer " + adminTok, []string{RoleAdmin}, 204, ""},
	}
	for _, c := range cases {
		seen = Caller{}
		req := httptest.NewRequest("GET", "/x", nil)
		if c.header != "" {
			req.Header.Set("Authorization", c.header)
		}
		rec := httptest.NewRecorder()
		Authenticate(b.verifier, ok, c.roles...).ServeHTTP(rec, req)
		if rec.Code != c.status {
			t.Errorf("%s: status %d, want %d (%s)", c.name, rec.Code, c.status, rec.Body)
			continue
		}
		if c.code != "" {
			var body map[string]string
			_ = json.Unmarshal(rec.Body.Bytes(), &body)
			if body["code"] != c.code || body["error"] == "" {
				t.Errorf("%s: body %s, want code %s", c.name, rec.Body, c.code)
			}
			if seen != (Caller{}) {
				t.Errorf("%s: handler ran", c.name)
			}
			if c.status == 401 && rec.Header().Get("WWW-Authenticate") == "" {
				t.Errorf("%s: no WWW-Authenticate header", c.name)
			}
		} else if seen.UserID == "" {
			t.Errorf("%s: no caller in context", c.name)
		}
	}
}
