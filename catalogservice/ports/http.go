// Package ports exposes catalogservice over HTTP.
package ports

import (
	_ "embed"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/sagabox/sagabox/catalogservice/app"
	"github.com/sagabox/sagabox/catalogservice/domain"
	"github.com/sagabox/sagabox/internal/platform/auth"
	"github.com/sagabox/sagabox/internal/platform/httpx"
)

// OpenAPI is the API's OpenAPI 3.1 document, served at /openapi.json.
//
//go:embed openapi.json
var OpenAPI []byte

// Page sizes of GET /products.
const (
	DefaultPageSize = 50
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

// NewHTTP returns the service's whole HTTP handler.
func NewHTTP(cfg HTTPConfig) http.Handler {
	h := &handlers{app: cfg.App, log: cfg.Logger}
	mux := http.NewServeMux()
	handle := func(pattern string, fn httpx.HandlerFunc) { mux.Handle(pattern, httpx.Handle(h.log, fn)) }
	mux.Handle("POST /products", auth.Authenticate(cfg.Verifier, httpx.Handle(h.log, h.addProduct), auth.RoleAdmin))
	handle("GET /products", h.listProducts)
	handle("GET /products/{sku}", h.getProduct)
	mux.Handle("GET /catalog/orders/{orderId}", auth.Authenticate(cfg.Verifier, httpx.Handle(h.log, h.getOrderView)))
	mux.Handle("GET /openapi.json", httpx.OpenAPI(OpenAPI))
	mux.Handle("GET /metrics", cfg.Metrics.Handler())
	cfg.Health.Register(mux)
	return httpx.Middleware(h.log, cfg.Metrics, httpx.JSONErrors(mux))
}

type handlers struct {
	app *app.Application
	log *slog.Logger
}

// productJSON is a product as the API shows it; price is in cents.
type productJSON struct {
	SKU       string    `json:"sku"`
	Name      string    `json:"name"`
	Price     int64     `json:"price"`
	Stock     int       `json:"stock"`
	CreatedAt time.Time `json:"createdAt"`
}

// orderViewJSON is the catalog's view of an order as the API shows it. Its
// items are copied from domain.ViewItem rather than encoded as they are:
// that type's JSON is the storage format of order_views.items.
type orderViewJSON struct {
	OrderID    string         `json:"orderId"`
	UserID     string         `json:"userId"`
	Status     string         `json:"status"`
	Reason     string         `json:"reason,omitempty"`
	Items      []viewItemJSON `json:"items"`
	TotalCents int64          `json:"totalCents"`
	UpdatedAt  time.Time      `json:"updatedAt"`
	// Version is how many of the order's events the view has applied: the
	// order service's version of the order once caught up.
	Version int `json:"version"`
}

type viewItemJSON struct {
	SKU            string `json:"sku"`
	Name           string `json:"name"`
	Quantity       int    `json:"quantity"`
	UnitPriceCents int64  `json:"unitPriceCents"`
}

func toJSON(p *domain.Product) productJSON {
	return productJSON{SKU: p.SKU, Name: p.Name, Price: p.PriceCents, Stock: p.Stock, CreatedAt: p.CreatedAt.UTC()}
}

func (h *handlers) addProduct(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		SKU   string `json:"sku"`
		Name  string `json:"name"`
		Price *int64 `json:"price"`
		Stock *int   `json:"stock"`
	}
	if err := httpx.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Price == nil {
		return httpx.BadRequest("validation_failed", "price is required (an integer number of cents)").With("field", "price")
	}
	if req.Stock == nil {
		return httpx.BadRequest("validation_failed", "stock is required").With("field", "stock")
	}
	p, err := h.app.AddProduct(r.Context(), req.SKU, req.Name, *req.Price, *req.Stock)
	if err != nil {
		return mapError(err)
	}
	w.Header().Set("Location", "/products/"+p.SKU)
	httpx.WriteJSON(w, http.StatusCreated, toJSON(p))
	return nil
}

func (h *handlers) listProducts(w http.ResponseWriter, r *http.Request) error {
	limit := DefaultPageSize
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxPageSize {
			return httpx.BadRequest("invalid_limit", "limit must be an integer between 1 and %d", MaxPageSize).With("field", "limit")
		}
		limit = n
	}
	ps, err := h.app.Products(r.Context(), r.URL.Query().Get("after"), limit)
	if err != nil {
		return err
	}
	out := make([]productJSON, len(ps))
	for i := range ps {
		out[i] = toJSON(&ps[i])
	}
	body := map[string]any{"products": out}
	if len(ps) == limit {
		body["nextAfter"] = ps[len(ps)-1].SKU
	}
	httpx.WriteJSON(w, http.StatusOK, body)
	return nil
}

func (h *handlers) getProduct(w http.ResponseWriter, r *http.Request) error {
	p, err := h.app.Product(r.Context(), r.PathValue("sku"))
	if err != nil {
		return mapError(err)
	}
	httpx.WriteJSON(w, http.StatusOK, toJSON(p))
	return nil
}

// getOrderView answers the read model of an order. With
// ?min_version=V (the order's version as the order service answered it)
// it answers only a view that has caught up with V, waiting up to ?wait=N
// seconds for the consumer to get there; still behind, it is a 409
// view_behind with the version it has and Retry-After, never an older
// state than the client has seen.
func (h *handlers) getOrderView(w http.ResponseWriter, r *http.Request) error {
	caller, _ := auth.CallerFrom(r.Context())
	minVersion := 0
	if s := r.URL.Query().Get("min_version"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return httpx.BadRequest("invalid_min_version", "min_version must be an order version (a whole number) from the order service").
				With("field", "min_version")
		}
		minVersion = n
	}
	wait, err := httpx.QueryWait(r, httpx.MaxWait)
	if err != nil {
		return err
	}
	orderID := r.PathValue("orderId")
	var v *domain.OrderView
	if minVersion == 0 {
		v, err = h.app.OrderView(r.Context(), caller.UserID, caller.IsAdmin(), orderID)
	} else {
		httpx.ExtendWriteDeadline(w, wait+10*time.Second)
		var ok bool
		v, ok, err = h.app.AwaitOrderView(r.Context(), caller.UserID, caller.IsAdmin(), orderID, minVersion, wait)
		if err == nil && !ok || errors.Is(err, domain.ErrOrderNotFound) {
			have := 0
			if v != nil {
				have = v.Version
			}
			w.Header().Set("Retry-After", "1")
			return httpx.Conflict("view_behind", "the catalog's view of this order has not caught up with version %d yet (it has %d): ask again", minVersion, have).
				With("version", have).With("minVersion", minVersion)
		}
	}
	if err != nil {
		return mapError(err)
	}
	out := orderViewJSON{OrderID: v.OrderID, UserID: v.UserID, Status: string(v.Status), Reason: v.Reason,
		Items: make([]viewItemJSON, len(v.Items)), TotalCents: v.TotalCents, UpdatedAt: v.UpdatedAt.UTC(), Version: v.Version}
	for i, it := range v.Items {
		out.Items[i] = viewItemJSON{SKU: it.SKU, Name: it.Name, Quantity: it.Quantity, UnitPriceCents: it.UnitPriceCents}
	}
	httpx.WriteJSON(w, http.StatusOK, out)
	return nil
}

func mapError(err error) error {
	var ve *domain.ValidationError
	switch {
	case errors.As(err, &ve):
		return httpx.BadRequest("validation_failed", "%s %s", ve.Field, ve.Message).With("field", ve.Field)
	case errors.Is(err, domain.ErrSKUTaken):
		return httpx.Conflict("sku_taken", "a product with this SKU already exists")
	case errors.Is(err, domain.ErrProductNotFound):
		return httpx.NotFound("product_not_found", "product not found")
	case errors.Is(err, domain.ErrOrderNotFound):
		return httpx.NotFound("order_not_found", "order not found")
	}
	return err
}
