// Package ports exposes orderservice over HTTP.
package ports

import (
	"context"
	_ "embed"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/httpx"
	"github.com/sagabox/sagabox/orderservice/app"
	"github.com/sagabox/sagabox/orderservice/domain"
	"github.com/sagabox/sagabox/saga"
)

// OpenAPI is the API's OpenAPI 3.1 document, served at /openapi.json.
//
//go:embed openapi.json
var OpenAPI []byte

// Page sizes of GET /orders.
const (
	DefaultPageSize = 20
	MaxPageSize     = 100
)

// HTTPConfig is what the HTTP port needs.
type HTTPConfig struct {
	App      *app.Application
	Verifier auth.TokenVerifier
	Health   *httpx.Health
	Metrics  *httpx.Metrics
	Logger   *slog.Logger
}

// NewHTTP returns the service's whole HTTP handler. Every /orders route
// needs a token of a customer (role user).
func NewHTTP(cfg HTTPConfig) http.Handler {
	h := &handlers{app: cfg.App, log: cfg.Logger}
	mux := http.NewServeMux()
	customer := func(pattern string, fn httpx.HandlerFunc) {
		mux.Handle(pattern, auth.Authenticate(cfg.Verifier, httpx.Handle(h.log, fn), auth.RoleUser))
	}
	customer("POST /orders", h.placeOrder)
	customer("GET /orders", h.listOrders)
	customer("GET /orders/{id}", h.getOrder)
	mux.Handle("GET /openapi.json", httpx.OpenAPI(OpenAPI))
	mux.Handle("GET /metrics", cfg.Metrics.Handler())
	cfg.Health.Register(mux)
	return httpx.Middleware(h.log, cfg.Metrics, httpx.JSONErrors(mux))
}

type handlers struct {
	app *app.Application
	log *slog.Logger
}

// PendingRetryAfterSeconds is the Retry-After of a 429
// too_many_pending_orders: a saga usually decides in well under a second.
const PendingRetryAfterSeconds = 2

// The API's JSON is camelCase, as issue 4 specified {"orderId", "status"}.

type itemJSON struct {
	SKU            string `json:"sku"`
	Quantity       int    `json:"quantity"`
	UnitPriceCents int64  `json:"unitPriceCents"`
}

type orderJSON struct {
	OrderID    uuid.UUID  `json:"orderId"`
	Status     string     `json:"status"`
	Reason     string     `json:"reason,omitempty"`
	Items      []itemJSON `json:"items"`
	TotalCents int64      `json:"totalCents"`
	CreatedAt  time.Time  `json:"createdAt"`
	UpdatedAt  time.Time  `json:"updatedAt"`
	// Version counts the order's events; the catalog's read model can be
	// asked for at least this version (GET /catalog/orders/{id}?min_version=).
	Version int       `json:"version"`
	Saga    *sagaJSON `json:"saga,omitempty"`
}

type sagaJSON struct {
	ID     uuid.UUID `json:"id"`
	Status string    `json:"status"`
	// Step is the name of the current step (or where the saga stopped).
	Step         string        `json:"step"`
	Compensating bool          `json:"compensating"`
	LastError    string        `json:"lastError,omitempty"`
	UpdatedAt    time.Time     `json:"updatedAt"`
	FinishedAt   *time.Time    `json:"finishedAt,omitempty"`
	History      []attemptJSON `json:"history"`
}

type attemptJSON struct {
	Step         string     `json:"step"`
	Compensation bool       `json:"compensation"`
	Attempt      int        `json:"attempt"`
	StartedAt    time.Time  `json:"startedAt"`
	FinishedAt   *time.Time `json:"finishedAt,omitempty"`
	Outcome      string     `json:"outcome,omitempty"`
	Error        string     `json:"error,omitempty"`
}

func toJSON(o *domain.Order) orderJSON {
	items := make([]itemJSON, len(o.Items))
	for i, it := range o.Items {
		items[i] = itemJSON{SKU: it.SKU, Quantity: it.Quantity, UnitPriceCents: it.UnitPriceCents}
	}
	return orderJSON{OrderID: o.ID, Status: string(o.Status), Reason: o.Reason, Items: items, TotalCents: o.TotalCents,
		CreatedAt: o.CreatedAt.UTC(), UpdatedAt: o.UpdatedAt.UTC(), Version: o.Version}
}

func toSagaJSON(i *saga.Info) *sagaJSON {
	s := &sagaJSON{ID: i.ID, Status: string(i.Status), Compensating: i.Compensation, LastError: i.LastError,
		UpdatedAt: i.UpdatedAt.UTC(), FinishedAt: utc(i.FinishedAt), History: make([]attemptJSON, len(i.History))}
	// The current step; once compensated (the step index is then before
	// the first), the last one that ran.
	for _, a := range i.History {
		if a.Step == i.Step || i.Step < 0 {
			s.Step = a.Name
		}
	}
	for n, a := range i.History {
		s.History[n] = attemptJSON{Step: a.Name, Compensation: a.Compensation, Attempt: a.Attempt,
			StartedAt: a.StartedAt.UTC(), FinishedAt: utc(a.FinishedAt), Outcome: string(a.Outcome), Error: a.Error}
	}
	return s
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func (h *handlers) placeOrder(w http.ResponseWriter, r *http.Request) error {
	caller, _ := auth.CallerFrom(r.Context())
	userID, err := uuid.Parse(caller.UserID)
	if err != nil {
		return httpx.Unauthorized("invalid_token", "the token's subject is not a user ID")
	}
	var req struct {
		Items []struct {
			SKU      string `json:"sku"`
			Quantity int    `json:"quantity"`
		} `json:"items"`
	}
	if err := httpx.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	items := make([]domain.Item, len(req.Items))
	for i, it := range req.Items {
		items[i] = domain.Item{SKU: it.SKU, Quantity: it.Quantity}
	}
	key, hasKey := r.Header["Idempotency-Key"]
	cmd := app.PlaceOrder{UserID: userID, Items: items}
	if hasKey {
		cmd.IdempotencyKey = key[0]
		if err := domain.ValidateIdempotencyKey(cmd.IdempotencyKey); err != nil {
			return mapError(err)
		}
	}
	o, replayed, err := h.app.PlaceOrder(r.Context(), cmd)
	var tp *domain.TooManyPendingError
	if errors.As(err, &tp) {
		w.Header().Set("Retry-After", strconv.Itoa(PendingRetryAfterSeconds))
	}
	if err != nil {
		return mapError(err)
	}
	w.Header().Set("Location", "/orders/"+o.ID.String())
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	// Prefer: wait=N (RFC 7240): the client would rather wait up to N
	// seconds for the saga's decision than poll. Decided in time: 201 with
	// the final order and Preference-Applied. Otherwise, as without it:
	// 202, the order is accepted, the saga decides it: poll (or long-poll)
	// the Location.
	if wait, ok := httpx.PreferWait(r, httpx.MaxWait); ok && wait > 0 { // a replay may be decided already
		httpx.ExtendWriteDeadline(w, wait+10*time.Second)
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		d, err := h.app.AwaitPlaced(ctx, o)
		cancel()
		if err != nil {
			return mapError(err)
		}
		if d.Order.Status != domain.StatusPending {
			httpx.PreferenceApplied(w, wait)
			writeOrder(w, http.StatusCreated, d)
			return nil
		}
		o = d.Order
	}
	httpx.WriteJSON(w, http.StatusAccepted, map[string]any{"orderId": o.ID, "status": o.Status, "version": o.Version})
	return nil
}

func writeOrder(w http.ResponseWriter, status int, d *app.OrderDetails) {
	body := toJSON(d.Order)
	if d.Saga != nil {
		body.Saga = toSagaJSON(d.Saga)
	}
	httpx.WriteJSON(w, status, body)
}

func (h *handlers) getOrder(w http.ResponseWriter, r *http.Request) error {
	caller, _ := auth.CallerFrom(r.Context())
	viewer, _ := uuid.Parse(caller.UserID)
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return mapError(domain.ErrOrderNotFound)
	}
	// ?wait=N: a long poll, until the order's status differs from
	// ?status= (default: the status it has now) or N seconds pass.
	wait, err := httpx.QueryWait(r, httpx.MaxWait)
	if err != nil {
		return err
	}
	if wait == 0 {
		d, err := h.app.Order(r.Context(), viewer, id)
		if err != nil {
			return mapError(err)
		}
		writeOrder(w, http.StatusOK, d)
		return nil
	}
	var from domain.Status
	switch s := r.URL.Query().Get("status"); s {
	case "":
		d, err := h.app.Order(r.Context(), viewer, id)
		if err != nil {
			return mapError(err)
		}
		from = d.Order.Status
	case string(domain.StatusPending), string(domain.StatusApproved), string(domain.StatusCancelled):
		from = domain.Status(s)
	default:
		return httpx.BadRequest("invalid_status", "status must be PENDING, APPROVED or CANCELLED").With("field", "status")
	}
	httpx.ExtendWriteDeadline(w, wait+10*time.Second)
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	d, err := h.app.AwaitOrder(ctx, viewer, id, from)
	if err != nil {
		return mapError(err)
	}
	writeOrder(w, http.StatusOK, d)
	return nil
}

func (h *handlers) listOrders(w http.ResponseWriter, r *http.Request) error {
	caller, _ := auth.CallerFrom(r.Context())
	viewer, _ := uuid.Parse(caller.UserID)
	q := r.URL.Query()
	limit := DefaultPageSize
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxPageSize {
			return httpx.BadRequest("invalid_limit", "limit must be an integer between 1 and %d", MaxPageSize).With("field", "limit")
		}
		limit = n
	}
	var before uuid.UUID
	if s := q.Get("before"); s != "" {
		var err error
		if before, err = uuid.Parse(s); err != nil {
			return httpx.BadRequest("invalid_cursor", "before must be an order ID from nextBefore").With("field", "before")
		}
	}
	orders, err := h.app.Orders(r.Context(), viewer, before, limit)
	if err != nil {
		return err
	}
	out := make([]orderJSON, len(orders))
	for i := range orders {
		out[i] = toJSON(&orders[i])
	}
	body := map[string]any{"orders": out}
	if len(orders) == limit {
		body["nextBefore"] = orders[len(orders)-1].ID
	}
	httpx.WriteJSON(w, http.StatusOK, body)
	return nil
}

func mapError(err error) error {
	var (
		ve *domain.ValidationError
		ue *domain.UnknownSKUError
		tp *domain.TooManyPendingError
	)
	switch {
	case errors.As(err, &tp):
		return httpx.NewError(http.StatusTooManyRequests, "too_many_pending_orders", "%s", tp.Error()).
			With("maxPendingOrders", tp.Max).With("retryAfterSeconds", PendingRetryAfterSeconds)
	case errors.As(err, &ve):
		return httpx.BadRequest("validation_failed", "%s %s", ve.Field, ve.Message).With("field", ve.Field)
	case errors.As(err, &ue):
		return httpx.Unprocessable("unknown_sku", "the catalog does not sell %s", strings.Join(ue.SKUs, ", ")).With("skus", ue.SKUs)
	case errors.Is(err, domain.ErrIdempotencyKeyReused):
		return httpx.Unprocessable("idempotency_key_reused",
			"this Idempotency-Key was used for a different order: use a new key for a new order")
	case errors.Is(err, domain.ErrOrderNotFound):
		return httpx.NotFound("order_not_found", "order not found")
	case errors.Is(err, app.ErrCatalogUnavailable):
		return &httpx.Error{Status: http.StatusServiceUnavailable, Code: "catalog_unavailable",
			Message: "the catalog cannot be reached to check the order: try again later", Err: err}
	}
	return err
}
