package shop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Client speaks to the shop's three HTTP APIs the way any client would:
// over the network, with JSON and bearer tokens.
type Client struct {
	UsersURL, CatalogURL, OrdersURL string
	// HTTP defaults to a client with a 30 s timeout.
	HTTP *http.Client
}

// Client returns a client of the shop s.
func (s *Shop) Client() *Client {
	return &Client{UsersURL: s.UsersURL, CatalogURL: s.CatalogURL, OrdersURL: s.OrdersURL}
}

// APIError is a non-2xx answer: the status and the JSON error's code.
type APIError struct {
	Method, URL string
	Status      int
	Code        string
	Message     string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.URL, e.Status, e.Code, e.Message)
}

// StatusOf is err's HTTP status, or 0 when err is not an *APIError.
func StatusOf(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// Session is a logged-in user.
type Session struct {
	UserID, Email, Token string
}

// Line is one line of an order.
type Line struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

// Product is a catalog product; Price is in cents.
type Product struct {
	SKU   string `json:"sku"`
	Name  string `json:"name"`
	Price int64  `json:"price"`
	Stock int    `json:"stock"`
}

// Order is what GET /orders/{id} answers.
type Order struct {
	OrderID string `json:"orderId"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Items   []struct {
		SKU            string `json:"sku"`
		Quantity       int    `json:"quantity"`
		UnitPriceCents int64  `json:"unitPriceCents"`
	} `json:"items"`
	TotalCents int64     `json:"totalCents"`
	CreatedAt  time.Time `json:"createdAt"`
	UpdatedAt  time.Time `json:"updatedAt"`
	Saga       *Saga     `json:"saga"`
}

// Decided reports whether the saga has finished with the order: approved
// or cancelled, and nothing left to undo.
func (o Order) Decided() bool {
	return o.Status != "PENDING" && o.Saga != nil && o.Saga.FinishedAt != nil
}

// Saga is the order saga's state and history, as the order API shows it.
type Saga struct {
	ID           string     `json:"id"`
	Status       string     `json:"status"`
	Step         string     `json:"step"`
	Compensating bool       `json:"compensating"`
	LastError    string     `json:"lastError"`
	UpdatedAt    time.Time  `json:"updatedAt"`
	FinishedAt   *time.Time `json:"finishedAt"`
	History      []Attempt  `json:"history"`
}

// Attempt is one attempt of one saga step or compensation.
type Attempt struct {
	Step         string     `json:"step"`
	Compensation bool       `json:"compensation"`
	Attempt      int        `json:"attempt"`
	StartedAt    time.Time  `json:"startedAt"`
	FinishedAt   *time.Time `json:"finishedAt"`
	Outcome      string     `json:"outcome"`
	Error        string     `json:"error"`
}

// CatalogOrder is the catalog's read model of an order, fed by
// order.events (GET /catalog/orders/{orderId}).
type CatalogOrder struct {
	OrderID    string `json:"orderId"`
	UserID     string `json:"userId"`
	Status     string `json:"status"`
	Reason     string `json:"reason"`
	TotalCents int64  `json:"totalCents"`
}

// DefaultPassword is the password Customer signs users up with.
const DefaultPassword = "correct horse battery staple"

// SignUp creates a user and returns its ID.
func (c *Client) SignUp(ctx context.Context, email, password, name string) (string, error) {
	var out struct {
		ID string `json:"id"`
	}
	err := c.do(ctx, http.MethodPost, c.UsersURL+"/signup", "", map[string]string{"email": email, "password": password, "name": name}, &out)
	return out.ID, err
}

// Login logs in. A 429 (too many attempts from this address) is waited out
// as Retry-After says, while ctx allows.
func (c *Client) Login(ctx context.Context, email, password string) (Session, error) {
	for {
		var out struct {
			Token  string `json:"token"`
			UserID string `json:"userId"`
		}
		err := c.do(ctx, http.MethodPost, c.UsersURL+"/login", "", map[string]string{"email": email, "password": password}, &out)
		var ae *APIError
		if errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests {
			select {
			case <-ctx.Done():
				return Session{}, err
			case <-time.After(time.Second):
				continue
			}
		}
		return Session{UserID: out.UserID, Email: email, Token: out.Token}, err
	}
}

// Customer signs a new user up with DefaultPassword and logs them in.
func (c *Client) Customer(ctx context.Context, email, name string) (Session, error) {
	if _, err := c.SignUp(ctx, email, DefaultPassword, name); err != nil {
		return Session{}, err
	}
	return c.Login(ctx, email, DefaultPassword)
}

// Credit is the user's credit in cents.
func (c *Client) Credit(ctx context.Context, s Session) (int64, error) {
	var out struct {
		CreditCents int64 `json:"creditCents"`
	}
	err := c.do(ctx, http.MethodGet, c.UsersURL+"/users/"+s.UserID, s.Token, nil, &out)
	return out.CreditCents, err
}

// AddProduct adds a product (admin only).
func (c *Client) AddProduct(ctx context.Context, adminToken string, p Product) error {
	return c.do(ctx, http.MethodPost, c.CatalogURL+"/products", adminToken, p, nil)
}

// Product reads a product.
func (c *Client) Product(ctx context.Context, sku string) (Product, error) {
	var p Product
	err := c.do(ctx, http.MethodGet, c.CatalogURL+"/products/"+sku, "", nil, &p)
	return p, err
}

// PlaceOrder places an order and returns its ID; the saga decides it later.
func (c *Client) PlaceOrder(ctx context.Context, token string, lines ...Line) (string, error) {
	var out struct {
		OrderID string `json:"orderId"`
	}
	err := c.do(ctx, http.MethodPost, c.OrdersURL+"/orders", token, map[string]any{"items": lines}, &out)
	return out.OrderID, err
}

// PlaceOrderWait places an order with `Prefer: wait=N` (RFC 7240): the
// answer comes when the saga has decided the order, within wait (whole
// seconds, at most 30), and is then the decided order; otherwise it is the
// PENDING order (OrderID and Status only). Follow up with AwaitChange.
func (c *Client) PlaceOrderWait(ctx context.Context, token string, wait time.Duration, lines ...Line) (Order, error) {
	var o Order
	h := http.Header{"Prefer": {"wait=" + strconv.Itoa(int(wait/time.Second))}}
	err := c.doWith(ctx, http.MethodPost, c.OrdersURL+"/orders", token, h, map[string]any{"items": lines}, &o)
	return o, err
}

// AwaitChange long-polls the order (GET /orders/{id}?wait=N&status=S) until
// its status is no longer status, for at most wait (whole seconds, at most
// 30).
func (c *Client) AwaitChange(ctx context.Context, token, id, status string, wait time.Duration) (Order, error) {
	var o Order
	url := fmt.Sprintf("%s/orders/%s?wait=%d&status=%s", c.OrdersURL, id, int(wait/time.Second), status)
	err := c.do(ctx, http.MethodGet, url, token, nil, &o)
	return o, err
}

// Order reads an order with its saga.
func (c *Client) Order(ctx context.Context, token, id string) (Order, error) {
	var o Order
	err := c.do(ctx, http.MethodGet, c.OrdersURL+"/orders/"+id, token, nil, &o)
	return o, err
}

// AwaitDecided polls the order every `every` until the saga has decided it,
// or ctx ends.
func (c *Client) AwaitDecided(ctx context.Context, token, id string, every time.Duration) (Order, error) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		o, err := c.Order(ctx, token, id)
		if err != nil || o.Decided() {
			return o, err
		}
		select {
		case <-ctx.Done():
			return o, fmt.Errorf("order %s still %s: %w", id, o.Status, ctx.Err())
		case <-t.C:
		}
	}
}

// CatalogOrder reads the catalog's view of an order.
func (c *Client) CatalogOrder(ctx context.Context, token, id string) (CatalogOrder, error) {
	var o CatalogOrder
	err := c.do(ctx, http.MethodGet, c.CatalogURL+"/catalog/orders/"+id, token, nil, &o)
	return o, err
}

func (c *Client) do(ctx context.Context, method, url, token string, body, out any) error {
	return c.doWith(ctx, method, url, token, nil, body, out)
}

func (c *Client) doWith(ctx context.Context, method, url, token string, headers http.Header, body, out any) error {
	var rd io.Reader
	if body != nil {
		js, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, vs := range headers {
		req.Header[k] = vs
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	res, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	if res.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
			Code  string `json:"code"`
		}
		_ = json.Unmarshal(raw, &e)
		if e.Error == "" {
			e.Error = strconv.Quote(string(raw))
		}
		return &APIError{Method: method, URL: url, Status: res.StatusCode, Code: e.Code, Message: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, url, err)
		}
	}
	return nil
}

var defaultHTTP = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second},
}
