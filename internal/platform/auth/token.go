// Package auth issues and verifies the shop's access tokens.
//
// userservice signs JWTs with an Ed25519 key (alg EdDSA) and publishes the
// public keys as a JWKS document at /.well-known/jwks.json. The other
// services verify tokens with a Verifier that fetches that document, keeps
// the keys in memory, and refetches when a token names a key it does not
// know (the issuer rotated). Verification pins the algorithm to EdDSA, picks
// the key by the token's kid, and requires exp, iss and aud: an "alg": "none"
// token, an HS256 token "signed" with the public key, or a token minted for
// another audience are all refused (PITFALLS.md 24).
package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Roles a token can carry.
const (
	RoleUser  = "user"
	RoleAdmin = "admin"
)

// Algorithm is the only JWS algorithm issued and accepted.
const Algorithm = "EdDSA"

// Claims are the claims of an access token: sub is the user ID.
type Claims struct {
	Role string `json:"role"`
	jwt.RegisteredClaims
}

// DefaultTokenTTL is how long an access token is valid.
const DefaultTokenTTL = 15 * time.Minute

// IssuerConfig configures an Issuer.
type IssuerConfig struct {
	// Key signs the tokens. Required; see ParsePrivateKey and GenerateKey.
	Key ed25519.PrivateKey
	// Issuer is the iss claim, e.g. "sagabox-userservice". Required.
	Issuer string
	// Audience is the aud claim: the services that accept the token, e.g.
	// "sagabox-shop". Required.
	Audience string
	// TTL is how long a token is valid. Defaults to DefaultTokenTTL.
	TTL time.Duration
	// RetiredKeys are public keys no longer used for signing but still
	// published, so tokens they signed verify until they expire. Defaults to
	// none. Rotate by moving the old key here and setting a new Key.
	RetiredKeys []ed25519.PublicKey
	// Now defaults to time.Now.
	Now func() time.Time
}

// Issuer signs access tokens and publishes its public keys.
type Issuer struct {
	cfg  IssuerConfig
	kid  string
	jwks []byte
}

// NewIssuer checks cfg and prepares the JWKS document.
func NewIssuer(cfg IssuerConfig) (*Issuer, error) {
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("auth: IssuerConfig.Key must be an Ed25519 private key")
	}
	if cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("auth: IssuerConfig.Issuer and Audience are required")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTokenTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	pub := cfg.Key.Public().(ed25519.PublicKey)
	keys := []JWK{NewJWK(pub)}
	for _, k := range cfg.RetiredKeys {
		keys = append(keys, NewJWK(k))
	}
	doc, err := json.Marshal(JWKS{Keys: keys})
	if err != nil {
		return nil, err
	}
	return &Issuer{cfg: cfg, kid: keys[0].Kid, jwks: doc}, nil
}

// KeyID is the kid of the signing key (its RFC 7638 thumbprint).
func (i *Issuer) KeyID() string { return i.kid }

// Issue signs a token for user with role. It returns the token and when it
// expires.
func (i *Issuer) Issue(userID, role string) (string, time.Time, error) {
	now := i.cfg.Now()
	exp := now.Add(i.cfg.TTL)
	claims := Claims{
		Role: role,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   userID,
			Issuer:    i.cfg.Issuer,
			Audience:  jwt.ClaimStrings{i.cfg.Audience},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
		},
	}
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	t.Header["kid"] = i.kid
	s, err := t.SignedString(i.cfg.Key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("auth: sign token: %w", err)
	}
	return s, exp, nil
}

// JWKS is the JSON Web Key Set document to serve at
// /.well-known/jwks.json.
func (i *Issuer) JWKS() []byte { return i.jwks }

// JWKS is a JSON Web Key Set (RFC 7517).
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// JWK is one public key; only Ed25519 (kty OKP, crv Ed25519) is used.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Kid string `json:"kid"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
}

// NewJWK describes pub as a JWK whose kid is its RFC 7638 thumbprint, so the
// kid is stable across restarts and instances sharing the key.
func NewJWK(pub ed25519.PublicKey) JWK {
	x := base64.RawURLEncoding.EncodeToString(pub)
	// RFC 7638: the required members, in lexicographic order, no spaces.
	sum := sha256.Sum256([]byte(`{"crv":"Ed25519","kty":"OKP","x":"` + x + `"}`))
	return JWK{Kty: "OKP", Crv: "Ed25519", X: x, Kid: base64.RawURLEncoding.EncodeToString(sum[:]), Alg: Algorithm, Use: "sig"}
}

// GenerateKey makes a new Ed25519 key, for development and tests: tokens it
// signed stop verifying when the process restarts.
func GenerateKey() ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// ParsePrivateKey reads an Ed25519 private key given as a PKCS#8 PEM block
// ("-----BEGIN PRIVATE KEY-----", what `openssl genpkey -algorithm ed25519`
// writes) or as the base64 of its 32-byte seed.
func ParsePrivateKey(s string) (ed25519.PrivateKey, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "-----BEGIN") {
		block, _ := pem.Decode([]byte(s))
		if block == nil {
			return nil, errors.New("auth: signing key: bad PEM")
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("auth: signing key: %w", err)
		}
		ek, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("auth: signing key is a %T, want Ed25519", k)
		}
		return ek, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if seed, err := enc.DecodeString(s); err == nil {
			if len(seed) != ed25519.SeedSize {
				return nil, fmt.Errorf("auth: signing key: seed is %d bytes, want %d", len(seed), ed25519.SeedSize)
			}
			return ed25519.NewKeyFromSeed(seed), nil
		}
	}
	return nil, errors.New("auth: signing key is neither PEM nor base64")
}
