package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/consoletest"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

func cli(t *testing.T, db string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(testkit.Ctx(t), append([]string{"-database-url", db}, args...), &out)
	return out.String(), err
}

func mustCLI(t *testing.T, db string, args ...string) string {
	t.Helper()
	out, err := cli(t, db, args...)
	if err != nil {
		t.Fatalf("sagabox %v: %v\n%s", args, err, out)
	}
	return out
}

// saga list, show and retry against a real shop: the failed saga is listed
// with its reason, its timeline shows the participant's words, and a retry
// from the CLI is carried out by the orchestrator and recorded.
func TestSagaListShowRetry(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	ok := shop.StartSaga(t, consoletest.Parcel{Parcel: "ok"})
	shop.WaitStatus(t, ok, saga.StatusSucceeded)
	failed := shop.FailedSaga(t, consoletest.Parcel{Parcel: "p-7"})
	db := shop.DB.URL

	out := mustCLI(t, db, "saga", "list", "-failed")
	if !strings.Contains(out, failed.String()) || strings.Contains(out, ok.String()) ||
		!regexp.MustCompile(`shipment\s+v1\s+failed\s+ship\s+`).MatchString(out) || !strings.Contains(out, "courier: no driver today") {
		t.Errorf("saga list -failed:\n%s", out)
	}
	out = mustCLI(t, db, "saga", "list")
	if i, j := strings.Index(out, failed.String()), strings.Index(out, ok.String()); i < 0 || j < 0 || i > j {
		t.Errorf("saga list is not newest first:\n%s", out)
	}
	// Paging: one a page, the cursor printed under it.
	out = mustCLI(t, db, "saga", "list", "-limit", "1")
	m := regexp.MustCompile(`more: add -after (\S+)`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, failed.String()) {
		t.Fatalf("saga list -limit 1:\n%s", out)
	}
	out = mustCLI(t, db, "saga", "list", "-limit", "1", "-after", m[1])
	if !strings.Contains(out, ok.String()) || strings.Contains(out, "more:") {
		t.Errorf("the second page:\n%s", out)
	}
	// -json.
	var page struct {
		Sagas []saga.Info `json:"sagas"`
		Next  string      `json:"next"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, db, "saga", "list", "-status", "failed,succeeded", "-json")), &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Sagas) != 2 || page.Sagas[0].ID != failed || page.Sagas[0].Status != saga.StatusFailed {
		t.Errorf("saga list -json: %+v", page)
	}

	out = mustCLI(t, db, "saga", "show", failed.String())
	for _, s := range []string{"shipment v1  FAILED", "timeline:", "reserve", "charge", "ship", "courier: no driver today", `"parcel": "p-7"`} {
		if !strings.Contains(out, s) {
			t.Errorf("saga show does not show %q:\n%s", s, out)
		}
	}
	var info saga.Info
	if err := json.Unmarshal([]byte(mustCLI(t, db, "saga", "show", "-json", failed.String())), &info); err != nil {
		t.Fatal(err)
	}
	if info.ID != failed || len(info.History) != 3 || info.History[2].Error != "courier: no driver today" {
		t.Errorf("saga show -json: %+v", info)
	}

	out = mustCLI(t, db, "saga", "retry", failed.String(), "-reason", "courier is back", "-actor", "carol")
	if !strings.Contains(out, "retry of saga "+failed.String()+" requested by carol") {
		t.Errorf("saga retry: %s", out)
	}
	done := shop.WaitStatus(t, failed, saga.StatusSucceeded)
	if len(done.Actions) != 2 || done.Actions[1].Actor != "carol" || done.Actions[1].Reason != "courier is back" || done.Actions[1].Result != saga.ResultDone {
		t.Errorf("actions: %+v", done.Actions)
	}
	out = mustCLI(t, db, "saga", "show", failed.String())
	if !strings.Contains(out, "retry done by carol: courier is back") {
		t.Errorf("saga show does not show the operator's action:\n%s", out)
	}
	if _, err := cli(t, db, "saga", "retry", failed.String()); err == nil || !strings.Contains(err.Error(), "only failed sagas") {
		t.Errorf("retrying a succeeded saga: %v", err)
	}
}

// saga abort needs a reason and compensates a running saga.
func TestSagaAbort(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	shop.WarehouseBusy.Store(true)
	id := shop.StartSaga(t, consoletest.Parcel{Parcel: "p-8"})
	shop.WaitAttempts(t, id, 1)
	db := shop.DB.URL
	if _, err := cli(t, db, "saga", "abort", id.String()); err == nil || !strings.Contains(err.Error(), "-reason") {
		t.Errorf("abort without a reason: %v", err)
	}
	if out := mustCLI(t, db, "saga", "list", "-status", "running"); !strings.Contains(out, id.String()) {
		t.Errorf("the running saga is not listed:\n%s", out)
	}
	if out := mustCLI(t, db, "saga", "show", id.String()); !strings.Contains(out, "warehouse: stock count in progress, try later") {
		t.Errorf("saga show does not show the participant's error:\n%s", out)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(mustCLI(t, db, "saga", "abort", id.String(), "-reason", "wrong address", "-json")), &res); err != nil {
		t.Fatal(err)
	}
	if res["action"] != "abort" || res["result"] != "requested" {
		t.Errorf("abort -json: %v", res)
	}
	info := shop.WaitStatus(t, id, saga.StatusCompensated)
	if info.Failure == nil || !strings.Contains(info.Failure.Reason, "wrong address") {
		t.Errorf("failure: %+v", info.Failure)
	}
}

// Bad input gets an error that says what is wrong.
func TestSagaCommandsBadInput(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	mustCLI(t, db.URL, "migrate")
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"saga", "show", "nope"}, "is not a saga ID"},
		{[]string{"saga", "show"}, "give one saga ID"},
		{[]string{"saga", "show", "01938f6e-0000-7000-8000-000000000000"}, "not found"},
		{[]string{"saga", "retry", "01938f6e-0000-7000-8000-000000000000"}, "not found"},
		{[]string{"saga", "list", "-status", "lost"}, "is not a saga status"},
		{[]string{"saga", "list", "-idle", "soon"}, "is not a duration"},
		{[]string{"saga", "list", "-limit", "0"}, "limit"},
		{[]string{"saga", "list", "-after", "zzz"}, "is not a cursor"},
		{[]string{"saga", "frobnicate"}, "unknown saga command"},
	} {
		if _, err := cli(t, db.URL, c.args...); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("sagabox %v: %v, want an error saying %q", c.args, err, c.says)
		}
	}
	bare := testkit.NewDatabase(t)
	if _, err := cli(t, bare.URL, "saga", "list"); err == nil || !strings.Contains(err.Error(), "run sagabox migrate") {
		t.Errorf("saga list on a database without the tables: %v", err)
	}
	if out := mustCLI(t, db.URL, "saga", "list"); !strings.Contains(out, "(no saga matches)") {
		t.Errorf("empty list: %s", out)
	}
	if out := mustCLI(t, db.URL, "outbox", "parked", "-json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("outbox parked -json: %s", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// sagabox console serves the console, refuses a non-loopback address
// without a token, and stops when its context is done.
func TestConsoleCommand(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	mustCLI(t, db.URL, "migrate")
	if _, err := cli(t, db.URL, "console", "-listen", "0.0.0.0:0", "-auth-token", ""); err == nil || !strings.Contains(err.Error(), "without an operator token") {
		t.Errorf("console on 0.0.0.0 without a token: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	testkit.Must(t, os.WriteFile(empty, nil, 0o600), "write")
	if _, err := cli(t, db.URL, "console", "-auth-token-file", empty); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("console with an empty token file: %v", err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	testkit.Must(t, os.WriteFile(tokenFile, []byte("tok\n"), 0o600), "write")
	ctx, cancel := context.WithCancel(testkit.Ctx(t))
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"console", "-database-url", db.URL, "-listen", "127.0.0.1:0", "-auth-token-file", tokenFile}, out)
	}()
	var base string
	testkit.Eventually(t, 30*time.Second, "the console to print its URL", func() bool {
		m := regexp.MustCompile(`sagabox console: (http://\S+/)`).FindStringSubmatch(out.String())
		if m != nil {
			base = m[1]
		}
		return m != nil
	})
	get := func(token string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+"sagas", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		res, err := http.DefaultTransport.RoundTrip(req)
		testkit.Must(t, err, "GET")
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := get("tok"); code != http.StatusOK || !strings.Contains(body, "Sagas") {
		t.Errorf("GET /sagas with the token: %d", code)
	}
	if code, _ := get("nope"); code != http.StatusUnauthorized {
		t.Errorf("GET /sagas with a wrong token: %d", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("console: %v", err)
	}
}

// outbox parked, retry and discard against a real shop; an action on a
// saga's message goes into the saga's history.
func TestOutboxCommands(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	id := shop.StartSaga(t, consoletest.Parcel{Parcel: "p-5"})
	shop.WaitStatus(t, id, saga.StatusSucceeded)
	plain, ofSaga := shop.Park(t, "plain"), shop.ParkFor(t, "of-saga", id.String())
	db := shop.DB.URL
	var parked []map[string]any
	if err := json.Unmarshal([]byte(mustCLI(t, db, "outbox", "parked", "-json")), &parked); err != nil || len(parked) != 2 {
		t.Fatalf("outbox parked -json: %v %v", parked, err)
	}
	if out := mustCLI(t, db, "outbox", "parked"); !strings.Contains(out, "plain") || !strings.Contains(out, "of-saga") {
		t.Errorf("outbox parked:\n%s", out)
	}
	out := mustCLI(t, db, "outbox", "discard", fmt.Sprint(ofSaga), fmt.Sprint(plain), "-reason", "test data", "-actor", "dave")
	if !strings.Contains(out, "discard: 2 message(s)") {
		t.Errorf("outbox discard: %s", out)
	}
	info, err := saga.NewAdmin(shop.DB.Pool).Get(testkit.Ctx(t), id)
	testkit.Must(t, err, "get")
	if len(info.Actions) != 1 || info.Actions[0].Action != saga.ActionOutboxDiscard || info.Actions[0].Actor != "dave" ||
		info.Actions[0].Reason != fmt.Sprintf("outbox message %d: test data", ofSaga) {
		t.Errorf("the saga's history: %+v", info.Actions)
	}
	if out := mustCLI(t, db, "saga", "show", id.String()); !strings.Contains(out, "outbox_discard done by dave") {
		t.Errorf("saga show:\n%s", out)
	}
	if _, err := cli(t, db, "outbox", "retry", fmt.Sprint(plain)); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("retrying a discarded message: %v", err)
	}
	var stats map[string]float64
	if err := json.Unmarshal([]byte(mustCLI(t, db, "outbox", "stats", "-json")), &stats); err != nil || stats["parked"] != 0 {
		t.Errorf("outbox stats -json: %v %v", stats, err)
	}
}
