package testkit

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
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

// CheckCamelCase fails t when the JSON in raw has an object key, at any
// depth, that is not camelCase (a key with "_" or "-" or starting upper
// case): the services' HTTP JSON is camelCase throughout.
func CheckCamelCase(t testing.TB, raw []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("not JSON: %v: %s", err, raw)
	}
	for _, k := range badKeys(v, "", false) {
		t.Errorf("JSON key %s is not camelCase in %s", k, raw)
	}
}

// CheckOpenAPICamelCase fails t when a schema of the OpenAPI document doc
// has a property, or a required entry, that is not camelCase.
func CheckOpenAPICamelCase(t testing.TB, doc []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatalf("OpenAPI document is not JSON: %v", err)
	}
	for _, k := range badKeys(v, "", true) {
		t.Errorf("OpenAPI property %s is not camelCase", k)
	}
}

// badKeys returns the paths of the keys under v that are not camelCase:
// every object key, or with schemas only the keys of "properties" objects
// and the entries of "required" lists.
func badKeys(v any, path string, schemas bool) []string {
	var bad []string
	camel := func(k string) bool {
		return k != "" && !strings.ContainsAny(k, "_-") && strings.ToLower(k[:1]) == k[:1]
	}
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			switch {
			case schemas && k == "properties":
				if props, ok := e.(map[string]any); ok {
					for name := range props {
						if !camel(name) {
							bad = append(bad, path+".properties."+name)
						}
					}
				}
			case schemas && k == "required":
				if names, ok := e.([]any); ok {
					for _, n := range names {
						if s, ok := n.(string); ok && !camel(s) {
							bad = append(bad, path+".required."+s)
						}
					}
				}
			case !schemas && !camel(k):
				bad = append(bad, path+"."+k)
			}
			bad = append(bad, badKeys(e, path+"."+k, schemas)...)
		}
	case []any:
		for i, e := range v {
			bad = append(bad, badKeys(e, path+"["+strconv.Itoa(i)+"]", schemas)...)
		}
	}
	sort.Strings(bad)
	return bad
}
