package httpx_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/sagabox/sagabox/internal/platform/httpx"
)

// A handler returns its error; DecodeJSON refuses what the API does not
// accept, and the answer is always a JSON error with the right status.
func ExampleDecodeJSON() {
	h := httpx.Handle(slog.New(slog.DiscardHandler), func(w http.ResponseWriter, r *http.Request) error {
		var req struct {
			Email string `json:"email"`
		}
		if err := httpx.DecodeJSON(w, r, &req); err != nil {
			return err
		}
		if req.Email == "" {
			return httpx.BadRequest("validation_failed", "email is required").With("field", "email")
		}
		httpx.WriteJSON(w, http.StatusCreated, req)
		return nil
	})
	for _, body := range []string{`{"email":"ann@example.com"}`, `{"email":"ann@example.com","admin":true}`, `{}`, `{"email":`} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/signup", strings.NewReader(body)))
		fmt.Print(rec.Code, " ", rec.Body.String())
	}
	// Output:
	// 201 {"email":"ann@example.com"}
	// 400 {"code":"unknown_field","error":"unknown field \"admin\"","field":"admin"}
	// 400 {"code":"validation_failed","error":"email is required","field":"email"}
	// 400 {"code":"malformed_json","error":"request body is not valid JSON (it ends too early)"}
}
