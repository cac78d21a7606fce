package adapters

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sagabox/sagabox/orderservice/app"
	"github.com/sagabox/sagabox/orderservice/domain"
)

// Catalog asks catalogservice's HTTP API (GET /products/{sku}) for list
// prices. It is a check at the door, so that an order for a SKU nobody sells
// gets a 422 and writes nothing; the stock reservation of the saga stays the
// authority on stock and on the price charged.
type Catalog struct {
	base    string
	client  *http.Client
	timeout time.Duration
}

// Defaults of the catalog client.
const (
	// CatalogTimeout bounds the whole lookup of one order.
	CatalogTimeout = 3 * time.Second
	// catalogParallelism bounds the lookups in flight for one order: up to
	// domain.MaxLines SKUs, one request each.
	catalogParallelism = 8
)

// NewCatalog returns a client of the catalog at baseURL
// ("http://catalogservice:8002") whose lookups take at most CatalogTimeout.
// client defaults to one with that timeout.
func NewCatalog(baseURL string, client *http.Client) *Catalog {
	return NewCatalogWithTimeout(baseURL, CatalogTimeout, client)
}

// NewCatalogWithTimeout is NewCatalog with the bound of one order's lookup
// (orderservice's CATALOG_TIMEOUT); zero or less means CatalogTimeout.
func NewCatalogWithTimeout(baseURL string, timeout time.Duration, client *http.Client) *Catalog {
	if timeout <= 0 {
		timeout = CatalogTimeout
	}
	if client == nil {
		client = &http.Client{Timeout: timeout}
	}
	return &Catalog{base: strings.TrimRight(baseURL, "/"), client: client, timeout: timeout}
}

// Prices returns the list price in cents of every SKU. SKUs the catalog
// does not know make a *domain.UnknownSKUError naming all of them; a catalog
// that does not answer makes an error wrapping app.ErrCatalogUnavailable.
func (c *Catalog) Prices(ctx context.Context, skus []string) (map[string]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var (
		mu      sync.Mutex
		prices  = make(map[string]int64, len(skus))
		unknown []string
		firstEr error
		wg      sync.WaitGroup
		slots   = make(chan struct{}, catalogParallelism)
	)
	for _, sku := range skus {
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			price, found, err := c.price(ctx, sku)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				if firstEr == nil {
					firstEr = err
				}
			case !found:
				unknown = append(unknown, sku)
			default:
				prices[sku] = price
			}
		})
	}
	wg.Wait()
	if firstEr != nil {
		return nil, fmt.Errorf("%w: %v", app.ErrCatalogUnavailable, firstEr)
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, &domain.UnknownSKUError{SKUs: unknown}
	}
	return prices, nil
}

func (c *Catalog) price(ctx context.Context, sku string) (int64, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/products/"+url.PathEscape(sku), nil)
	if err != nil {
		return 0, false, err
	}
	req.Header.Set("Accept", "application/json")
	res, err := c.client.Do(req)
	if err != nil {
		return 0, false, err
	}
	defer res.Body.Close()
	var body struct {
		Price int64  `json:"price"`
		Code  string `json:"code"`
	}
	decodeErr := json.NewDecoder(io.LimitReader(res.Body, 1<<16)).Decode(&body)
	switch {
	case res.StatusCode == http.StatusNotFound && body.Code == "product_not_found":
		return 0, false, nil
	case res.StatusCode != http.StatusOK:
		// A 404 without that code is a wrong CATALOG_URL, not an unknown SKU.
		return 0, false, fmt.Errorf("GET /products/%s: %s", sku, res.Status)
	case decodeErr != nil:
		return 0, false, fmt.Errorf("GET /products/%s: %w", sku, decodeErr)
	}
	return body.Price, true, nil
}
