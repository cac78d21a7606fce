package httpx

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Text rules. Postgres refuses a NUL byte and invalid UTF-8 in text
// (SQLSTATE 22021), and encoding/json silently turns invalid UTF-8 into
// U+FFFD, so both are refused at the edge, before any work is paid for (a
// password hash, a query): every path, query parameter and JSON string
// (keys included) must be valid UTF-8 without NUL, or the request gets
//
//	400 {"code": "invalid_text", "in": "path|query|body", "field": "<name>", "error": "..."}
//
// Middleware checks the path and the query; DecodeJSON checks the body.

// CheckText returns the 400 invalid_text error for field (found in "path",
// "query" or "body") when s is not valid UTF-8 or contains a NUL byte, and
// nil otherwise.
func CheckText(in, field, s string) error {
	if ValidText(s) {
		return nil
	}
	return invalidText(in, field)
}

// ValidText reports whether s is valid UTF-8 without NUL bytes.
func ValidText(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

func invalidText(in, field string) *Error {
	field = strings.ToValidUTF8(strings.ReplaceAll(field, "\x00", `\0`), "\uFFFD")
	what := map[string]string{"path": "the path", "query": "query parameter", "body": "field"}[in]
	if in != "path" {
		what += " " + strconv.Quote(field)
	}
	return BadRequest("invalid_text", "%s must be valid UTF-8 without NUL bytes", what).With("in", in).With("field", field)
}

// CheckRequestText checks the request's path and query parameters (names and
// values), as decoded, against the text rules.
func CheckRequestText(r *http.Request) error {
	if err := CheckText("path", "path", r.URL.Path); err != nil {
		return err
	}
	if r.URL.RawQuery == "" {
		return nil
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return BadRequest("invalid_query", "the query string is malformed: %v", err).With("field", "query")
	}
	for k, vs := range q {
		if err := CheckText("query", k, k); err != nil {
			return err
		}
		for _, v := range vs {
			if err := CheckText("query", k, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkJSONText walks the JSON document raw and returns the invalid_text
// error naming the first string (key or value) that is not valid UTF-8 or
// contains NUL, as a path like "lines[0].sku". A syntax error ends the walk
// with nil: DecodeJSON reports it.
func checkJSONText(raw []byte) error {
	if utf8.Valid(raw) && !bytes.Contains(raw, []byte(`\u0000`)) && bytes.IndexByte(raw, 0) < 0 {
		return nil // the common case: nothing to look for
	}
	type frame struct {
		obj       bool
		key       string
		idx       int
		expectKey bool
	}
	var stack []frame
	path := func(key string) string {
		var b strings.Builder
		for _, f := range stack {
			if f.obj {
				if b.Len() > 0 {
					b.WriteByte('.')
				}
				b.WriteString(f.key)
			} else {
				b.WriteString("[" + strconv.Itoa(f.idx) + "]")
			}
		}
		if key != "" {
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(key)
		}
		if b.Len() == 0 {
			return "body"
		}
		return b.String()
	}
	valueDone := func() {
		if n := len(stack); n > 0 {
			if stack[n-1].obj {
				stack[n-1].expectKey = true
			} else {
				stack[n-1].idx++
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	var prev int64
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		end := dec.InputOffset()
		span := raw[prev:end]
		prev = end
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				stack = append(stack, frame{obj: true, expectKey: true})
			case '[':
				stack = append(stack, frame{})
			default:
				stack = stack[:len(stack)-1]
				valueDone()
			}
		case string:
			bad := !utf8.Valid(span) || strings.IndexByte(t, 0) >= 0
			if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].expectKey {
				if bad {
					return invalidText("body", path(t))
				}
				stack[n-1].key, stack[n-1].expectKey = t, false
				continue
			}
			if bad {
				return invalidText("body", path(""))
			}
			valueDone()
		default:
			valueDone()
		}
	}
}
