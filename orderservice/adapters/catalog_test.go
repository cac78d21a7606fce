package adapters_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sagabox/sagabox/internal/platform/httpx"
	"github.com/sagabox/sagabox/orderservice/adapters"
	"github.com/sagabox/sagabox/orderservice/app"
	"github.com/sagabox/sagabox/orderservice/domain"
)

// catalogAPI answers GET /products/{sku} like catalogservice for the SKUs
// it knows (the real service is used in the end-to-end test).
func catalogAPI(t *testing.T, prices map[string]int64) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /products/{sku}", func(w http.ResponseWriter, r *http.Request) {
		p, ok := prices[r.PathValue("sku")]
		if !ok {
			httpx.WriteError(w, r, nil, httpx.NotFound("product_not_found", "product not found"))
			return
		}
		httpx.WriteJSON(w, 200, map[string]any{"sku": r.PathValue("sku"), "price": p, "stock": 1})
	})
	mux.HandleFunc("GET /broken/products/{sku}", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, r, nil, httpx.NewError(500, "internal", "internal error"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestCatalogPricesNamesEveryUnknownSKU(t *testing.T) {
	t.Parallel()
	url := catalogAPI(t, map[string]int64{"TEA-1": 450, "MUG-1": 900})
	c := adapters.NewCatalog(url+"/", nil)
	prices, err := c.Prices(context.Background(), []string{"TEA-1", "MUG-1"})
	if err != nil || prices["TEA-1"] != 450 || prices["MUG-1"] != 900 {
		t.Fatalf("%v %v", prices, err)
	}
	_, err = c.Prices(context.Background(), []string{"ZZZ", "TEA-1", "AAA"})
	var ue *domain.UnknownSKUError
	if !errors.As(err, &ue) || strings.Join(ue.SKUs, ",") != "AAA,ZZZ" {
		t.Fatalf("unknown SKUs: %v", err)
	}
}

// Only the catalog's own "product_not_found" means an unknown SKU. A wrong
// CATALOG_URL (any other 404), a failing or unreachable catalog: the
// catalog is unavailable, and the order is not refused as if the SKU were
// unknown.
func TestCatalogUnavailableIsNotAnUnknownSKU(t *testing.T) {
	t.Parallel()
	url := catalogAPI(t, map[string]int64{"TEA-1": 450})
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	for name, base := range map[string]string{"wrong path": url + "/v2", "failing": url + "/broken", "unreachable": dead.URL} {
		_, err := adapters.NewCatalog(base, nil).Prices(context.Background(), []string{"TEA-1"})
		if !errors.Is(err, app.ErrCatalogUnavailable) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
