package auth_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/sagabox/sagabox/internal/platform/auth"
)

// userservice issues a token; another service verifies it with the keys it
// fetches from userservice's /.well-known/jwks.json.
func Example() {
	issuer, _ := auth.NewIssuer(auth.IssuerConfig{Key: auth.GenerateKey(), Issuer: "sagabox-users", Audience: "sagabox"})
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(issuer.JWKS()) }))
	defer jwks.Close()

	token, _, _ := issuer.Issue("3f1c9a5e-0000-7000-8000-000000000001", auth.RoleUser)

	verifier, _ := auth.NewVerifier(auth.VerifierConfig{Keys: auth.FromURL(jwks.URL, nil), Issuer: "sagabox-users", Audience: "sagabox"})
	claims, err := verifier.Verify(context.Background(), token)
	fmt.Println(claims.Subject, claims.Role, err)

	// A token minted for another audience is refused.
	other, _ := auth.NewIssuer(auth.IssuerConfig{Key: auth.GenerateKey(), Issuer: "sagabox-users", Audience: "another-app"})
	foreign, _, _ := other.Issue("someone", auth.RoleAdmin)
	_, err = verifier.Verify(context.Background(), foreign)
	fmt.Println(errors.Is(err, auth.ErrInvalidToken))
	// Output:
	// 3f1c9a5e-0000-7000-8000-000000000001 user <nil>
	// true
}
