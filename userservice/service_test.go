package userservice_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/httpx"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/userservice"
	"github.com/sagabox/sagabox/userservice/adapters"
	"github.com/sagabox/sagabox/userservice/app"
	"github.com/sagabox/sagabox/userservice/ports"
)

const (
	adminEmail = "admin@shop.test"
	adminPass  = "admin-password-1"
)

type bundle struct {
	svc *userservice.Service
	h   http.Handler
	db  *testkit.Database
	key ed25519.PrivateKey
}

func setup(t *testing.T) bundle {
	t.Helper()
	db := testkit.NewDatabase(t)
	key := auth.GenerateKey()
	svc, err := userservice.New(testkit.Ctx(t), userservice.Config{
		Pool: db.Pool, SigningKey: key, AdminEmail: adminEmail, AdminPassword: adminPass,
		LoginBurst: 3, LoginEvery: time.Hour, SignupBurst: 100,
		// Cheap hashing: the tests check behaviour, not cost.
		PasswordParams: adapters.Argon2idParams{Memory: 64, Time: 1, Threads: 1},
	})
	testkit.Must(t, err, "new userservice")
	t.Cleanup(svc.Close)
	return bundle{svc: svc, h: svc.Handler(), db: db, key: key}
}

func (b bundle) users(t *testing.T) int {
	t.Helper()
	var n int
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM users`).Scan(&n), "count users")
	return n
}

func (b bundle) signUp(t *testing.T, email string) string {
	t.Helper()
	res := testkit.Call(t, b.h, "POST", "/signup", map[string]string{"email": email, "password": "password-123", "name": "Ann"})
	if res.Status != 201 {
		t.Fatalf("signup %s: %d %s", email, res.Status, res.Raw)
	}
	return res.Body["id"].(string)
}

func (b bundle) login(t *testing.T, email, password string) string {
	t.Helper()
	res := testkit.Call(t, b.h, "POST", "/login", map[string]string{"email": email, "password": password})
	if res.Status != 200 {
		t.Fatalf("login %s: %d %s", email, res.Status, res.Raw)
	}
	return res.Body["token"].(string)
}

func TestSignUpLoginAndReadOwnUser(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res := testkit.Call(t, b.h, "POST", "/signup", map[string]string{"email": "Ann@Example.com", "password": "password-123", "name": "Ann"})
	if res.Status != 201 || res.Body["id"] == "" || res.Body["email"] != "ann@example.com" ||
		res.Body["creditCents"] != float64(10000) || res.Body["role"] != "user" || res.Header.Get("Location") == "" {
		t.Fatalf("signup: %d %s", res.Status, res.Raw)
	}
	if strings.Contains(string(res.Raw), "password") {
		t.Fatalf("the response shows the password hash: %s", res.Raw)
	}
	testkit.CheckCamelCase(t, res.Raw)
	if _, err := time.Parse(time.RFC3339, fmt.Sprint(res.Body["createdAt"])); err != nil {
		t.Fatalf("signup createdAt: %s", res.Raw)
	}
	id := res.Body["id"].(string)
	login := testkit.Call(t, b.h, "POST", "/login", map[string]string{"email": "ann@EXAMPLE.com", "password": "password-123"})
	testkit.CheckCamelCase(t, login.Raw)
	if login.Status != 200 || login.Body["userId"] != id || login.Body["tokenType"] != "Bearer" || login.Body["expiresAt"] == nil {
		t.Fatalf("login: %d %s", login.Status, login.Raw)
	}
	tok := login.Body["token"].(string)

	got := testkit.Call(t, b.h, "GET", "/users/"+id, nil, testkit.Bearer(tok)...)
	if got.Status != 200 || got.Body["id"] != id || got.Body["creditCents"] != float64(10000) {
		t.Fatalf("get own user: %d %s", got.Status, got.Raw)
	}
	testkit.CheckCamelCase(t, got.Raw)

	// The token carries what the other services need, and verifies through
	// the published JWKS over HTTP, as they will.
	srv := httptest.NewServer(b.h)
	defer srv.Close()
	v, err := auth.NewVerifier(auth.VerifierConfig{Keys: auth.FromURL(srv.URL+"/.well-known/jwks.json", srv.Client()),
		Issuer: userservice.DefaultIssuer, Audience: userservice.DefaultAudience})
	testkit.Must(t, err, "verifier")
	claims, err := v.Verify(context.Background(), tok)
	testkit.Must(t, err, "verify login token through JWKS")
	if claims.Subject != id || claims.Role != "user" || claims.ExpiresAt == nil {
		t.Fatalf("claims %+v", claims)
	}
	parsed, _, _ := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
	if parsed.Header["kid"] != b.svc.Issuer().KeyID() || parsed.Header["alg"] != "EdDSA" {
		t.Fatalf("header %v", parsed.Header)
	}
}

func TestDuplicateEmailIsAConflict(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.signUp(t, "bob@example.com")
	before := b.users(t)
	for _, email := range []string{"bob@example.com", "BOB@example.com"} {
		res := testkit.Call(t, b.h, "POST", "/signup", map[string]string{"email": email, "password": "password-456", "name": "Bob"})
		if res.Status != 409 || res.Code() != "email_taken" {
			t.Errorf("%s: %d %s", email, res.Status, res.Raw)
		}
	}
	if n := b.users(t); n != before {
		t.Fatalf("users %d, want %d", n, before)
	}
}

// Every bad sign-up gets a clear 4xx and writes nothing.
func TestBadSignUpsWriteNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	before := b.users(t)
	long := strings.Repeat("x", 200)
	cases := []struct {
		name, body, ctype string
		status            int
		code              string
	}{
		{"malformed JSON", `{"email": "a@b.co",`, "", 400, "malformed_json"},
		{"not an object", `"a@b.co"`, "", 400, "malformed_json"},
		{"unknown field", `{"email":"a@b.co","password":"password-1","name":"A","role":"admin"}`, "", 400, "unknown_field"},
		{"credit smuggled in", `{"email":"a@b.co","password":"password-1","name":"A","creditCents":999999}`, "", 400, "unknown_field"},
		{"oversized", `{"email":"a@b.co","password":"password-1","name":"` + strings.Repeat("A", httpx.MaxBodyBytes) + `"}`, "", 413, "body_too_large"},
		{"trailing data", `{"email":"a@b.co","password":"password-1","name":"A"} {}`, "", 400, "malformed_json"},
		{"empty body", ``, "", 400, "empty_body"},
		{"wrong content type", `email=a@b.co`, "text/plain", 415, "unsupported_media_type"},
		{"missing email", `{"password":"password-1","name":"A"}`, "", 400, "validation_failed"},
		{"invalid email", `{"email":"not-an-email","password":"password-1","name":"A"}`, "", 400, "validation_failed"},
		{"missing password", `{"email":"a@b.co","name":"A"}`, "", 400, "validation_failed"},
		{"short password", `{"email":"a@b.co","password":"short","name":"A"}`, "", 400, "validation_failed"},
		{"long password", `{"email":"a@b.co","password":"` + long + `","name":"A"}`, "", 400, "validation_failed"},
		{"missing name", `{"email":"a@b.co","password":"password-1"}`, "", 400, "validation_failed"},
		{"name too long", `{"email":"a@b.co","password":"password-1","name":"` + long + `"}`, "", 400, "validation_failed"},
		{"wrong type", `{"email":"a@b.co","password":12345678,"name":"A"}`, "", 400, "invalid_field"},
	}
	for _, c := range cases {
		var headers []string
		if c.ctype != "" {
			headers = []string{"Content-Type", c.ctype}
		}
		res := testkit.Call(t, b.h, "POST", "/signup", c.body, headers...)
		if res.Status != c.status || res.Code() != c.code || res.Body["error"] == "" {
			t.Errorf("%s: %d %s, want %d %s", c.name, res.Status, res.Raw, c.status, c.code)
		}
	}
	if n := b.users(t); n != before {
		t.Fatalf("bad sign-ups wrote users: %d, want %d", n, before)
	}
}

func TestLoginFailuresAndRateLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.signUp(t, "carol@example.com")
	for name, body := range map[string]string{
		"wrong password": `{"email":"carol@example.com","password":"wrong-password"}`,
		"unknown email":  `{"email":"nobody@example.com","password":"password-123"}`,
	} {
		res := testkit.Call(t, b.h, "POST", "/login", body)
		if res.Status != 401 || res.Code() != "invalid_credentials" || res.Body["error"] != "invalid email or password" {
			t.Errorf("%s: %d %s", name, res.Status, res.Raw)
		}
	}
	for name, body := range map[string]string{
		"unknown field": `{"email":"carol@example.com","password":"password-123","remember":true}`,
		"missing":       `{"email":"carol@example.com"}`,
		"malformed":     `{"email":`,
	} {
		if res := testkit.Call(t, b.h, "POST", "/login", body); res.Status != 400 {
			t.Errorf("%s: %d %s", name, res.Status, res.Raw)
		}
	}
	// LoginBurst is 3 in setup; the wrong password above was the first.
	for range 2 {
		testkit.Call(t, b.h, "POST", "/login", `{"email":"carol@example.com","password":"guess"}`)
	}
	res := testkit.Call(t, b.h, "POST", "/login", `{"email":"carol@example.com","password":"password-123"}`)
	if res.Status != 429 || res.Code() != "too_many_attempts" || res.Header.Get("Retry-After") == "" ||
		fmt.Sprint(res.Body["retryAfterSeconds"]) != res.Header.Get("Retry-After") {
		t.Fatalf("4th attempt: %d %s", res.Status, res.Raw)
	}
	testkit.CheckCamelCase(t, res.Raw)
	// Another account from the same address is not locked out by carol's.
	b.signUp(t, "dave@example.com")
	b.login(t, "dave@example.com", "password-123")
}

func TestUserIsVisibleToThemselfAndAdminsOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ann := b.signUp(t, "ann@example.com")
	bob := b.signUp(t, "bob@example.com")
	annTok := b.login(t, "ann@example.com", "password-123")
	adminTok := b.login(t, adminEmail, adminPass)

	if res := testkit.Call(t, b.h, "GET", "/users/"+bob, nil, testkit.Bearer(annTok)...); res.Status != 404 {
		t.Errorf("ann reads bob: %d %s", res.Status, res.Raw)
	}
	if res := testkit.Call(t, b.h, "GET", "/users/"+ann, nil, testkit.Bearer(adminTok)...); res.Status != 200 || res.Body["creditCents"] != float64(10000) {
		t.Errorf("admin reads ann: %d %s", res.Status, res.Raw)
	}
	if res := testkit.Call(t, b.h, "GET", "/users/not-a-uuid", nil, testkit.Bearer(adminTok)...); res.Status != 404 {
		t.Errorf("bad id: %d %s", res.Status, res.Raw)
	}

	expired := sign(t, b, jwt.MapClaims{"sub": ann, "role": "user", "iss": userservice.DefaultIssuer,
		"aud": userservice.DefaultAudience, "exp": time.Now().Add(-time.Hour).Unix()})
	wrongAud := sign(t, b, jwt.MapClaims{"sub": ann, "role": "user", "iss": userservice.DefaultIssuer,
		"aud": "elsewhere", "exp": time.Now().Add(time.Hour).Unix()})
	forgedAdmin := sign(t, b, jwt.MapClaims{"sub": ann, "role": "admin", "iss": userservice.DefaultIssuer,
		"aud": userservice.DefaultAudience, "exp": time.Now().Add(time.Hour).Unix()})
	forgedAdmin = forgedAdmin[:strings.LastIndexByte(forgedAdmin, '.')] + ".AAAA" // signature replaced
	for name, c := range map[string]struct {
		headers []string
		code    string
	}{
		"no token":       {nil, "missing_token"},
		"garbage token":  {testkit.Bearer("garbage"), "invalid_token"},
		"expired token":  {testkit.Bearer(expired), "token_expired"},
		"wrong audience": {testkit.Bearer(wrongAud), "invalid_token"},
		"bad signature":  {testkit.Bearer(forgedAdmin), "invalid_token"},
	} {
		res := testkit.Call(t, b.h, "GET", "/users/"+ann, nil, c.headers...)
		if res.Status != 401 || res.Code() != c.code {
			t.Errorf("%s: %d %s", name, res.Status, res.Raw)
		}
	}
}

func sign(t *testing.T, b bundle, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	tok.Header["kid"] = b.svc.Issuer().KeyID()
	s, err := tok.SignedString(b.key)
	testkit.Must(t, err, "sign")
	return s
}

func TestAdminBootstrapIsIdempotent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// A second instance starting on the same database finds the admin.
	again, err := userservice.New(testkit.Ctx(t), userservice.Config{Pool: b.db.Pool, AdminEmail: adminEmail, AdminPassword: "another-password",
		PasswordParams: adapters.Argon2idParams{Memory: 64, Time: 1, Threads: 1}})
	testkit.Must(t, err, "second instance")
	defer again.Close()
	var n int
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM users WHERE role = 'admin'`).Scan(&n), "count")
	if n != 1 {
		t.Fatalf("%d admins", n)
	}
	b.login(t, adminEmail, adminPass) // the first password still works
}

func TestServesHealthMetricsJWKSAndOpenAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json", "/.well-known/jwks.json"} {
		if res := testkit.Call(t, b.h, "GET", path, nil); res.Status != 200 {
			t.Errorf("%s: %d %s", path, res.Status, res.Raw)
		}
	}
	keys, err := auth.ParseJWKS(testkit.Call(t, b.h, "GET", "/.well-known/jwks.json", nil).Raw)
	testkit.Must(t, err, "jwks")
	if _, ok := keys[b.svc.Issuer().KeyID()]; !ok {
		t.Fatal("the signing key is not published")
	}
	testkit.CheckOpenAPI(t, b.h, ports.OpenAPI, "POST /signup", "POST /login", "GET /users/{id}",
		"GET /.well-known/jwks.json", "GET /healthz", "GET /readyz", "GET /metrics", "GET /openapi.json")
	testkit.CheckOpenAPICamelCase(t, ports.OpenAPI)
	if res := testkit.Call(t, b.h, "GET", "/nope", nil); res.Status != 404 || res.Code() != "not_found" {
		t.Errorf("unknown route: %d %s", res.Status, res.Raw)
	}
	if res := testkit.Call(t, b.h, "GET", "/signup", nil); res.Status != 405 || res.Code() != "method_not_allowed" {
		t.Errorf("wrong method: %d %s", res.Status, res.Raw)
	}
}

// Issue 11.1: an account signed up with the admin email before the admin
// was bootstrapped must not become an admin, and keeps no path to the role:
// start-up stops with an error naming the account, and nothing about it
// changes (role, password).
func TestAdminBootstrapNeverPromotesAnExistingAccount(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const squatter = "boss@shop.test"
	id := b.signUp(t, squatter) // password-123, the attacker's
	var hashBefore string
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `SELECT password_hash FROM users WHERE id = $1`, id).Scan(&hashBefore), "hash")

	_, err := userservice.New(testkit.Ctx(t), userservice.Config{Pool: b.db.Pool, AdminEmail: "Boss@shop.test", AdminPassword: "the-real-admin-pw",
		PasswordParams: adapters.Argon2idParams{Memory: 64, Time: 1, Threads: 1}})
	var taken *app.AdminEmailTakenError
	if !errors.As(err, &taken) || taken.UserID.String() != id || !strings.Contains(err.Error(), squatter) {
		t.Fatalf("start-up with a non-admin account at ADMIN_EMAIL: err %v, want an AdminEmailTakenError naming %s", err, squatter)
	}
	var role, hash string
	testkit.Must(t, b.db.Pool.QueryRow(context.Background(), `SELECT role, password_hash FROM users WHERE id = $1`, id).Scan(&role, &hash), "read")
	if role != "user" || hash != hashBefore {
		t.Fatalf("the existing account changed: role %q, password changed %v", role, hash != hashBefore)
	}
	tok := b.login(t, squatter, "password-123")
	if res := testkit.Call(t, b.h, "GET", "/users/"+id, nil, testkit.Bearer(tok)...); res.Body["role"] != "user" {
		t.Fatalf("the squatter's role: %s", res.Raw)
	}
}

// Issue 11.5: a NUL byte or invalid UTF-8 in any text is a 400 naming the
// field, decided before the password hash is paid for; never a 500 from
// Postgres (SQLSTATE 22021).
func TestInvalidTextIsA400NamingTheField(t *testing.T) {
	t.Parallel()
	b := setup(t)
	before := b.users(t)
	for _, c := range []struct{ name, path, body, field string }{
		{"NUL in the name", "/signup", `{"email":"nul@example.com","password":"password-123","name":"A\u0000B"}`, "name"},
		{"invalid UTF-8 in the name", "/signup", "{\"email\":\"bad@example.com\",\"password\":\"password-123\",\"name\":\"A\xffB\"}", "name"},
		{"NUL in the password", "/signup", `{"email":"pw@example.com","password":"password-\u0000123","name":"A"}`, "password"},
		{"NUL in a login email", "/login", `{"email":"carol\u0000@example.com","password":"password-123"}`, "email"},
		{"invalid UTF-8 in a login email", "/login", "{\"email\":\"carol\xc3@example.com\",\"password\":\"password-123\"}", "email"},
	} {
		res := testkit.Call(t, b.h, "POST", c.path, c.body)
		if res.Status != 400 || res.Code() != "invalid_text" || res.Body["field"] != c.field {
			t.Errorf("%s: %d %s, want 400 invalid_text naming %s", c.name, res.Status, res.Raw, c.field)
		}
	}
	if res := testkit.Call(t, b.h, "GET", "/users/%00", nil); res.Status != 400 || res.Code() != "invalid_text" || res.Body["field"] != "path" {
		t.Errorf("NUL in the path: %d %s", res.Status, res.Raw)
	}
	if n := b.users(t); n != before {
		t.Fatalf("invalid text wrote users: %d, want %d", n, before)
	}
}

// Issue 11.7: NFC and NFD spellings of one address, in any case, are one
// account; a look-alike with a Cyrillic letter is refused.
func TestLookAlikeEmailsAreOneAccountOrRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res := testkit.Call(t, b.h, "POST", "/signup", map[string]string{"email": "ren\u00e9@example.com", "password": "password-123", "name": "René"})
	if res.Status != 201 {
		t.Fatalf("signup: %d %s", res.Status, res.Raw)
	}
	for _, email := range []string{"rene\u0301@example.com", "RENE\u0301@EXAMPLE.COM", "REN\u00c9@example.com"} {
		res := testkit.Call(t, b.h, "POST", "/signup", map[string]string{"email": email, "password": "password-456", "name": "Other"})
		if res.Status != 409 || res.Code() != "email_taken" {
			t.Errorf("signup %q: %d %s, want 409 email_taken", email, res.Status, res.Raw)
		}
	}
	b.login(t, "RENE\u0301@example.com", "password-123") // any spelling logs in
	for _, email := range []string{"r\u0435ne@example.com", "rene@ex\u0430mple.com"} {
		res := testkit.Call(t, b.h, "POST", "/signup", map[string]string{"email": email, "password": "password-456", "name": "Other"})
		if res.Status != 400 || res.Code() != "validation_failed" || res.Body["field"] != "email" {
			t.Errorf("signup %q: %d %s, want 400 on email", email, res.Status, res.Raw)
		}
	}
	if n := b.users(t); n != 2 { // the admin and René
		t.Fatalf("%d users, want 2", n)
	}
}

// Issue 11.2: sign-ups are limited per client address (each account comes
// with starting credit): past the burst a 429 too_many_signups with
// Retry-After, before anything is hashed or written; another address is not
// affected.
func TestSignUpsAreRateLimitedPerClient(t *testing.T) {
	t.Parallel()
	b := setup(t)
	svc, err := userservice.New(testkit.Ctx(t), userservice.Config{Pool: b.db.Pool, SignupBurst: 2, SignupEvery: time.Hour,
		PasswordParams: adapters.Argon2idParams{Memory: 64, Time: 1, Threads: 1}})
	testkit.Must(t, err, "userservice")
	defer svc.Close()
	signUp := func(addr, email string) *httptest.ResponseRecorder {
		body := fmt.Sprintf(`{"email":%q,"password":"password-123","name":"M"}`, email)
		req := httptest.NewRequest("POST", "/signup", strings.NewReader(body))
		req.RemoteAddr = addr
		rec := httptest.NewRecorder()
		svc.Handler().ServeHTTP(rec, req)
		return rec
	}
	before := b.users(t)
	for i := range 2 {
		if rec := signUp("198.51.100.7:4000", fmt.Sprintf("m%d@example.com", i)); rec.Code != 201 {
			t.Fatalf("sign-up %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	rec := signUp("198.51.100.7:4001", "m2@example.com")
	if rec.Code != 429 || !strings.Contains(rec.Body.String(), `"too_many_signups"`) || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("third sign-up from one address: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	if rec := signUp("203.0.113.9:4000", "other@example.com"); rec.Code != 201 {
		t.Fatalf("sign-up from another address: %d %s", rec.Code, rec.Body)
	}
	if n := b.users(t); n != before+3 {
		t.Fatalf("%d users, want %d", n, before+3)
	}
}
