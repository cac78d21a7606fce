package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/internal/testkit"
)

// A service mounts the console under /console next to its own API, with a
// token, and samples the outbox's publish rate in the background.
func ExampleNew() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, drop, err := testkit.CreateDatabase(ctx, "example_console")
	if err != nil {
		panic(err)
	}
	defer drop() //nolint:errcheck
	client, err := sagabox.NewClient(db.Pool, sagabox.Config{})
	if err != nil {
		panic(err)
	}
	if err := client.Migrate(ctx); err != nil {
		panic(err)
	}

	c, err := console.New(console.Config{Pool: db.Pool, AuthToken: "change-me", Prefix: "/console"})
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	mux := http.NewServeMux()
	mux.Handle("/console/", http.StripPrefix("/console", c))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, token := range []string{"", "change-me"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/console/sagas", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		fmt.Println(res.StatusCode, res.Header.Get("Location"), strings.Contains(string(body), `href="/console/outbox"`))
	}
	stop()
	fmt.Println("run:", <-done)
	// Output:
	// 303 /console/login?next=%2Fconsole%2Fsagas false
	// 200  true
	// run: <nil>
}
