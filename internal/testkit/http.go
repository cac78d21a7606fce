package testkit

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
)

// Response is what an HTTP call through Call answered.
type Response struct {
	Status int
	Header http.Header
	Raw    []byte
	Body   map[string]any // the body as a JSON object, nil when it is not one
}

// Code is the error code of a JSON error body ({"error": "...", "code": "..."}).
func (r Response) Code() string { s, _ := r.Body["code"].(string); return s }

// Call sends one request to h in process. body is sent as is when it is a
// string, marshalled as JSON otherwise (nil: no body). headers are name,
// value pairs; Content-Type defaults to application/json when there is a
// body.
func Call(t testing.TB, h http.Handler, method, path string, body any, headers ...string) Response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		js, err := json.Marshal(b)
		if err != nil {
			t.Fatalf("testkit: marshal body: %v", err)
		}
		rd = strings.NewReader(string(js))
	}
	req := httptest.NewRequest(method, path, rd)
	req.RemoteAddr = "192.0.2.1:1234"
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := Response{Status: rec.Code, Header: rec.Header(), Raw: rec.Body.Bytes()}
	_ = json.Unmarshal(res.Raw, &res.Body)
	return res
}

// Bearer returns the header pair for a bearer token, for Call.
func Bearer(token string) []string { return []string{"Authorization", "Bearer " + token} }

// CheckOpenAPI fails t unless doc is a JSON OpenAPI document whose every
// operation reaches a route of h (the router does not answer not_found or
// method_not_allowed for it), and whose paths include every one of routes
// ("GET /users/{id}"), so the document and the router cannot drift apart.
func CheckOpenAPI(t testing.TB, h http.Handler, doc []byte, routes ...string) {
	t.Helper()
	var d struct {
		OpenAPI string                               `json:"openapi"`
		Paths   map[string]map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatalf("OpenAPI document is not JSON: %v", err)
	}
	if !strings.HasPrefix(d.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", d.OpenAPI)
	}
	documented := map[string]bool{}
	var ops []string
	for path, methods := range d.Paths {
		for m := range methods {
			op := strings.ToUpper(m) + " " + path
			documented[op] = true
			ops = append(ops, op)
		}
	}
	sort.Strings(ops)
	for _, op := range ops {
		method, path, _ := strings.Cut(op, " ")
		concrete := path
		for strings.Contains(concrete, "{") {
			i, j := strings.Index(concrete, "{"), strings.Index(concrete, "}")
			concrete = concrete[:i] + "00000000-0000-0000-0000-000000000000" + concrete[j+1:]
		}
		res := Call(t, h, method, concrete, nil)
		if c := res.Code(); (res.Status == 404 && c == "not_found") || res.Status == 405 {
			t.Errorf("OpenAPI documents %s but the router has no such route (%d %s)", op, res.Status, c)
		}
	}
	for _, r := range routes {
		if !documented[r] {
			t.Errorf("route %s is not in the OpenAPI document", r)
		}
	}
}
