package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
)

// MaxBodyBytes is the largest request body DecodeJSON reads: 64 KiB, far more
// than any request of the shop needs (an order of 100 lines is ~5 KiB) and
// small enough that a client cannot make the service buffer megabytes.
const MaxBodyBytes = 64 << 10

// DecodeJSON decodes the request body into v, strictly: the body must be one
// JSON value of at most MaxBodyBytes, with no field v does not have and
// nothing after it. The Content-Type must be application/json (or a
// +json type) when given; application/x-www-form-urlencoded is tolerated
// because it is what `curl -d` sends, and the body must be JSON anyway. The
// error is an *Error (400, 413 or 415) naming what is wrong.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json") && mt != "application/x-www-form-urlencoded") {
			return NewError(http.StatusUnsupportedMediaType, "unsupported_media_type",
				"Content-Type must be application/json")
		}
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return decodeError(err)
		}
		return BadRequest("unreadable_body", "request body could not be read: %v", err)
	}
	// Text rules first (see CheckText): encoding/json would turn invalid
	// UTF-8 into U+FFFD and let a NUL through to the database.
	if err := checkJSONText(raw); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	// One value only: "{...} {...}" or "{...} garbage" is refused.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return BadRequest("malformed_json", "request body must contain a single JSON object")
	}
	return nil
}

func decodeError(err error) error {
	var (
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
		mbe    *http.MaxBytesError
	)
	switch {
	case errors.As(err, &mbe):
		return NewError(http.StatusRequestEntityTooLarge, "body_too_large",
			"request body must not be larger than %d bytes", mbe.Limit)
	case errors.Is(err, io.EOF):
		return BadRequest("empty_body", "request body must not be empty")
	case errors.As(err, &syntax):
		return BadRequest("malformed_json", "request body is not valid JSON (at byte %d)", syntax.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return BadRequest("malformed_json", "request body is not valid JSON (it ends too early)")
	case errors.As(err, &typ):
		if typ.Field != "" {
			return BadRequest("invalid_field", "field %q must be a %s", typ.Field, jsonKind(typ.Type.Kind().String())).
				With("field", typ.Field)
		}
		return BadRequest("malformed_json", "request body must be a JSON %s", jsonKind(typ.Type.Kind().String()))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return BadRequest("unknown_field", "unknown field %q", field).With("field", field)
	default:
		return BadRequest("malformed_json", "request body is not valid JSON: %v", err)
	}
}

func jsonKind(goKind string) string {
	switch goKind {
	case "struct", "map":
		return "object"
	case "slice", "array":
		return "array"
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64":
		return "number"
	}
	return fmt.Sprint(goKind)
}
