// Package httpx is the HTTP plumbing of the reference services.
package httpx

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
)

// Error is an error with the HTTP answer it deserves. Handlers return it (or
// wrap it); WriteError turns it into
//
//	{"error": "quantity must be between 1 and 1000", "code": "invalid_quantity", ...Fields}
//
// with Status. Any other error is a 500 whose details are logged, not shown.
type Error struct {
	Status  int            // HTTP status
	Code    string         // stable, snake_case, for programs
	Message string         // for people
	Fields  map[string]any // extra members of the JSON body, e.g. "sku"
	Err     error          // cause, logged, never sent
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Message, e.Err)
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// With returns a copy of e with an extra field in the JSON body.
func (e *Error) With(key string, value any) *Error {
	c := *e
	c.Fields = make(map[string]any, len(e.Fields)+1)
	for k, v := range e.Fields {
		c.Fields[k] = v
	}
	c.Fields[key] = value
	return &c
}

// NewError returns an *Error. msg may use fmt verbs.
func NewError(status int, code, msg string, args ...any) *Error {
	if len(args) > 0 {
		msg = fmt.Sprintf(msg, args...)
	}
	return &Error{Status: status, Code: code, Message: msg}
}

// Shorthands for the common answers.
func BadRequest(code, msg string, args ...any) *Error {
	return NewError(http.StatusBadRequest, code, msg, args...)
}
func Unauthorized(code, msg string, args ...any) *Error {
	return NewError(http.StatusUnauthorized, code, msg, args...)
}
func Forbidden(code, msg string, args ...any) *Error {
	return NewError(http.StatusForbidden, code, msg, args...)
}
func NotFound(code, msg string, args ...any) *Error {
	return NewError(http.StatusNotFound, code, msg, args...)
}
func Conflict(code, msg string, args ...any) *Error {
	return NewError(http.StatusConflict, code, msg, args...)
}
func Unprocessable(code, msg string, args ...any) *Error {
	return NewError(http.StatusUnprocessableEntity, code, msg, args...)
}

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers with err: its status and body when it is (or wraps) an
// *Error, a 500 "internal" otherwise. 5xx causes are logged with the request.
func WriteError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var he *Error
	if !errors.As(err, &he) {
		he = &Error{Status: http.StatusInternalServerError, Code: "internal", Message: "internal error", Err: err}
	}
	if he.Status >= 500 && log != nil {
		log.ErrorContext(r.Context(), "http: request failed", "method", r.Method, "path", r.URL.Path,
			"request_id", RequestID(r.Context()), "err", err)
	}
	body := make(map[string]any, len(he.Fields)+2)
	for k, v := range he.Fields {
		body[k] = v
	}
	body["error"] = he.Message
	body["code"] = he.Code
	if he.Status == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	}
	WriteJSON(w, he.Status, body)
}

// HandlerFunc is an http.HandlerFunc that returns its error instead of
// writing it, so every handler answers errors the same way.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts fn to an http.Handler that writes fn's error with WriteError.
func Handle(log *slog.Logger, fn HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			WriteError(w, r, log, err)
		}
	})
}
