package httpx

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var quiet = slog.New(slog.DiscardHandler)

type signup struct {
	Email string `json:"email"`
	Age   int    `json:"age"`
}

func TestDecodeJSONIsStrict(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, body, ctype string
		status            int
		code              string
	}{
		{"valid", `{"email":"a@b.c","age":3}`, "application/json", 200, ""},
		{"valid with charset", `{"email":"a@b.c"}`, "application/json; charset=utf-8", 200, ""},
		{"no content type", `{"email":"a@b.c"}`, "", 200, ""},
		{"empty", ``, "application/json", 400, "empty_body"},
		{"malformed", `{"email":`, "application/json", 400, "malformed_json"},
		{"syntax error", `{"email" "x"}`, "application/json", 400, "malformed_json"},
		{"unknown field", `{"email":"a@b.c","admin":true}`, "application/json", 400, "unknown_field"},
		{"wrong type", `{"email":"a@b.c","age":"three"}`, "application/json", 400, "invalid_field"},
		{"array instead of object", `[1,2]`, "application/json", 400, "malformed_json"},
		{"trailing object", `{"email":"a"}{"email":"b"}`, "application/json", 400, "malformed_json"},
		{"trailing garbage", `{"email":"a"} x`, "application/json", 400, "malformed_json"},
		{"oversized", `{"email":"` + strings.Repeat("a", MaxBodyBytes) + `"}`, "application/json", 413, "body_too_large"},
		{"curl -d with JSON", `{"email":"a@b.c"}`, "application/x-www-form-urlencoded", 200, ""},
		{"curl -d with a form", `email=a`, "application/x-www-form-urlencoded", 400, "malformed_json"},
		{"text", `{"email":"a@b.c"}`, "text/plain", 415, "unsupported_media_type"},
		{"multipart", `{"email":"a@b.c"}`, "multipart/form-data; boundary=x", 415, "unsupported_media_type"},
	}
	for _, c := range cases {
		h := Handle(quiet, func(w http.ResponseWriter, r *http.Request) error {
			var s signup
			if err := DecodeJSON(w, r, &s); err != nil {
				return err
			}
			WriteJSON(w, 200, s)
			return nil
		})
		req := httptest.NewRequest("POST", "/", strings.NewReader(c.body))
		if c.ctype != "" {
			req.Header.Set("Content-Type", c.ctype)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.status {
			t.Errorf("%s: status %d, want %d: %s", c.name, rec.Code, c.status, rec.Body)
			continue
		}
		if c.code != "" {
			var body map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Errorf("%s: error body is not JSON: %s", c.name, rec.Body)
			}
			if body["code"] != c.code || body["error"] == "" {
				t.Errorf("%s: body %s, want code %s", c.name, rec.Body, c.code)
			}
		}
	}
}

func TestInternalErrorsAreNotLeaked(t *testing.T) {
	t.Parallel()
	h := Handle(quiet, func(w http.ResponseWriter, r *http.Request) error {
		return errors.New("pq: password authentication failed for user shop")
	})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 500 || strings.Contains(rec.Body.String(), "password") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}

func newMux() (*http.ServeMux, *Health, *Metrics) {
	mux := http.NewServeMux()
	h := NewHealth()
	h.Register(mux)
	m := NewMetrics("test")
	mux.Handle("GET /metrics", m.Handler())
	mux.Handle("GET /openapi.json", OpenAPI([]byte(`{"openapi":"3.1.0"}`)))
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, 200, map[string]string{"id": r.PathValue("id")})
	})
	mux.HandleFunc("GET /panic", func(w http.ResponseWriter, r *http.Request) { panic("boom") })
	return mux, h, m
}

func do(t *testing.T, h http.Handler, method, path string) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	var body map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &body)
	return rec, body
}

func TestRoutingErrorsAreJSONAndMetricsUseThePattern(t *testing.T) {
	t.Parallel()
	mux, _, m := newMux()
	h := Middleware(quiet, m, JSONErrors(mux))

	if rec, body := do(t, h, "GET", "/nope"); rec.Code != 404 || body["code"] != "not_found" {
		t.Errorf("unknown path: %d %v", rec.Code, body)
	}
	rec, body := do(t, h, "DELETE", "/items/1")
	if rec.Code != 405 || body["code"] != "method_not_allowed" || !strings.Contains(rec.Header().Get("Allow"), "GET") {
		t.Errorf("wrong method: %d %v %v", rec.Code, body, rec.Header())
	}
	if rec, body := do(t, h, "GET", "/panic"); rec.Code != 500 || body["code"] != "internal" {
		t.Errorf("panic: %d %v", rec.Code, body)
	}
	if rec, _ := do(t, h, "GET", "/items/42"); rec.Code != 200 || rec.Header().Get("X-Request-ID") == "" {
		t.Errorf("item: %d %v", rec.Code, rec.Header())
	}
	rec, _ = do(t, h, "GET", "/metrics")
	text := rec.Body.String()
	for _, want := range []string{
		`http_requests_total{code="200",method="GET",route="GET /items/{id}",service="test"} 1`,
		`http_requests_total{code="404",method="GET",route="unmatched",service="test"} 1`,
		`http_requests_total{code="500",method="GET",route="GET /panic",service="test"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(text, `route="/items/42"`) {
		t.Error("raw paths used as labels")
	}
}

func TestReadyzRunsChecksAndDrains(t *testing.T) {
	t.Parallel()
	mux, health, _ := newMux()
	var dbErr error
	health.Add("postgres", func(ctx context.Context) error { return dbErr })

	if rec, _ := do(t, mux, "GET", "/healthz"); rec.Code != 200 {
		t.Errorf("healthz %d", rec.Code)
	}
	if rec, body := do(t, mux, "GET", "/readyz"); rec.Code != 200 || body["status"] != "ok" {
		t.Errorf("readyz %d %v", rec.Code, body)
	}
	dbErr = errors.New("connection refused")
	rec, body := do(t, mux, "GET", "/readyz")
	if rec.Code != 503 || body["checks"].(map[string]any)["postgres"] != "connection refused" {
		t.Errorf("readyz with db down: %d %v", rec.Code, body)
	}
	if rec, _ := do(t, mux, "GET", "/healthz"); rec.Code != 200 {
		t.Errorf("healthz must not depend on the database: %d", rec.Code)
	}
	dbErr = nil
	health.Drain()
	if rec, _ := do(t, mux, "GET", "/readyz"); rec.Code != 503 {
		t.Errorf("readyz while draining %d", rec.Code)
	}
}

// A request in flight when shutdown starts still gets its answer.
func TestServeDrainsInFlightRequests(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(200 * time.Millisecond)
		_, _ = io.WriteString(w, "done")
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, l, h, quiet) }()

	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + l.Addr().String() + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-started
	cancel()
	if s := <-got; s != "done" {
		t.Fatalf("in-flight request got %q", s)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := http.Get("http://" + l.Addr().String() + "/"); err == nil {
		t.Fatal("still serving after shutdown")
	}
}

// Issue 11.5: a NUL byte or invalid UTF-8 anywhere a handler reads text is
// a 400 invalid_text naming where it is, never reaches the handler (which
// would pay for a hash, or hand it to Postgres: SQLSTATE 22021, a 500).
func TestTextMustBeValidUTF8WithoutNUL(t *testing.T) {
	t.Parallel()
	reached := 0
	mux := http.NewServeMux()
	mux.Handle("POST /items/{id}", Handle(quiet, func(w http.ResponseWriter, r *http.Request) error {
		var req struct {
			Name  string `json:"name"`
			Lines []struct {
				SKU string `json:"sku"`
			} `json:"lines"`
		}
		if err := DecodeJSON(w, r, &req); err != nil {
			return err
		}
		reached++
		WriteJSON(w, 200, req)
		return nil
	}))
	h := Middleware(quiet, nil, JSONErrors(mux))
	cases := []struct {
		name, target, body string
		status             int
		in, field          string
	}{
		{"valid", "/items/a?q=é", `{"name":"Zoë","lines":[{"sku":"A-1"}]}`, 200, "", ""},
		{"escaped non-ASCII", "/items/a", `{"name":"Zo\u00eb"}`, 200, "", ""},
		{"NUL in path", "/items/a%00b", `{}`, 400, "path", "path"},
		{"invalid UTF-8 in path", "/items/a%ffb", `{}`, 400, "path", "path"},
		{"NUL in query", "/items/a?after=x%00", `{}`, 400, "query", "after"},
		{"invalid UTF-8 in query", "/items/a?after=%c3%28", `{}`, 400, "query", "after"},
		{"NUL in query name", "/items/a?x%00=1", `{}`, 400, "query", `x\0`},
		{"escaped NUL in JSON", "/items/a", `{"name":"a\u0000b"}`, 400, "body", "name"},
		{"raw invalid UTF-8 in JSON", "/items/a", "{\"name\":\"a\xffb\"}", 400, "body", "name"},
		{"nested", "/items/a", `{"name":"ok","lines":[{"sku":"A"},{"sku":"B\u0000"}]}`, 400, "body", "lines[1].sku"},
		{"in a key", "/items/a", "{\"na\xc3me\":\"x\"}", 400, "body", "na\uFFFDme"},
	}
	for _, c := range cases {
		before := reached
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/items/x", strings.NewReader(c.body))
		req.URL, _ = req.URL.Parse(c.target)
		req.RequestURI = c.target
		h.ServeHTTP(rec, req)
		var body map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != c.status {
			t.Errorf("%s: %d %s, want %d", c.name, rec.Code, rec.Body, c.status)
			continue
		}
		if c.status == 400 {
			if body["code"] != "invalid_text" || body["in"] != c.in || body["field"] != c.field || reached != before {
				t.Errorf("%s: %s (handler reached %v), want invalid_text in %s field %q", c.name, rec.Body, reached != before, c.in, c.field)
			}
		}
	}
}

// Issue 11.6: a client sending its body one byte at a time is cut off once
// ReadTimeout has passed, instead of holding the connection forever; so is
// one that stays silent after its headers.
func TestSlowClientsAreCutOff(t *testing.T) {
	t.Parallel()
	h := Handle(quiet, func(w http.ResponseWriter, r *http.Request) error {
		var v map[string]any
		if err := DecodeJSON(w, r, &v); err != nil {
			return err
		}
		WriteJSON(w, 200, v)
		return nil
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- ServeConfig(ctx, l, h, quiet, ServerConfig{ReadHeaderTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond})
	}()
	defer func() { cancel(); <-served }()

	for _, c := range []struct {
		name string
		drip bool
	}{{"body one byte every 50ms", true}, {"silent after the headers", false}} {
		conn, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
		testkitMust(t, err)
		closed := make(chan struct{})
		go func() {
			_, _ = io.Copy(io.Discard, conn) // returns when the server closes the connection
			close(closed)
		}()
		// Generous: the server must cut the client off within ReadTimeout;
		// 30s only guards a loaded machine. The drip alone would take
		// 100000 × 50ms.
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(50 * time.Millisecond)
	drip:
		for {
			select {
			case <-closed:
				break drip
			case <-deadline:
				conn.Close()
				t.Fatalf("%s: the connection is still open after 30s", c.name)
			case <-tick.C:
				if c.drip {
					if _, err := io.WriteString(conn, " "); err != nil {
						<-closed
						break drip
					}
				}
			}
		}
		tick.Stop()
		conn.Close()
	}
}

func testkitMust(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestPreferWaitFollowsRFC7240(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		prefer []string
		want   time.Duration
		ok     bool
	}{
		{nil, 0, false},
		{[]string{"wait=5"}, 5 * time.Second, true},
		{[]string{"respond-async, wait=10"}, 10 * time.Second, true},
		{[]string{"return=minimal", "Wait = 3"}, 3 * time.Second, true},
		{[]string{"wait=600"}, MaxWait, true},
		{[]string{"wait=soon"}, 0, false},
		{[]string{"wait=-1"}, 0, false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		for _, p := range c.prefer {
			r.Header.Add("Prefer", p)
		}
		if got, ok := PreferWait(r, MaxWait); got != c.want || ok != c.ok {
			t.Errorf("Prefer %q: %v %v, want %v %v", c.prefer, got, ok, c.want, c.ok)
		}
	}
	for q, ok := range map[string]bool{"": true, "?wait=0": true, "?wait=30": true, "?wait=31": false, "?wait=x": false, "?wait=-2": false} {
		if _, err := QueryWait(httptest.NewRequest("GET", "/"+q, nil), MaxWait); (err == nil) != ok {
			t.Errorf("%q: %v", q, err)
		}
	}
}

// A handler that waits on purpose (a long poll) past WriteTimeout still
// delivers its answer once it extends its write deadline, through the
// middleware's wrapper; one that does not is cut off.
func TestExtendWriteDeadlineOutlivesWriteTimeout(t *testing.T) {
	t.Parallel()
	const hold = 600 * time.Millisecond // the handler's deliberate wait: what is under test
	mux := http.NewServeMux()
	mux.HandleFunc("GET /extended", func(w http.ResponseWriter, r *http.Request) {
		if !ExtendWriteDeadline(w, 30*time.Second) {
			t.Error("the deadline could not be extended through the middleware")
		}
		time.Sleep(hold)
		WriteJSON(w, 200, map[string]string{"ok": "yes"})
	})
	mux.HandleFunc("GET /plain", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(hold)
		WriteJSON(w, 200, map[string]string{"ok": "yes"})
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- ServeConfig(ctx, l, Middleware(quiet, nil, mux), quiet, ServerConfig{WriteTimeout: 100 * time.Millisecond})
	}()
	defer func() { cancel(); <-served }()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.Get("http://" + l.Addr().String() + "/extended")
	if err != nil {
		t.Fatalf("extended: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "yes") {
		t.Fatalf("extended: %d %s", res.StatusCode, body)
	}
	if res, err := client.Get("http://" + l.Addr().String() + "/plain"); err == nil {
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if strings.Contains(string(body), "yes") {
			t.Fatalf("a handler past WriteTimeout still answered: %s", body)
		}
	}
}
