package console_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/internal/consoletest"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// bundle is a console over a database, served over HTTP, and a browser-like
// client (cookies kept, redirects not followed).
type bundle struct {
	t    *testing.T
	srv  *httptest.Server
	http *http.Client
	logs *logBuffer
}

type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *logBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func serve(t *testing.T, cfg console.Config) *bundle {
	t.Helper()
	b := &bundle{t: t, logs: &logBuffer{}}
	cfg.Logger = slog.New(slog.NewTextHandler(b.logs, nil))
	c, err := console.New(cfg)
	testkit.Must(t, err, "console.New")
	b.srv = httptest.NewServer(c)
	t.Cleanup(b.srv.Close)
	jar, _ := cookiejar.New(nil)
	b.http = &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	t.Cleanup(b.http.CloseIdleConnections)
	return b
}

type resp struct {
	Code     int
	Body     string
	Location string
}

func (b *bundle) do(method, path string, form url.Values, header ...string) resp {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.srv.URL+path, body)
	testkit.Must(b.t, err, "request")
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := b.http.Do(req)
	testkit.Must(b.t, err, "%s %s", method, path)
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	return resp{Code: res.StatusCode, Body: string(raw), Location: res.Header.Get("Location")}
}

func (b *bundle) get(path string) resp { b.t.Helper(); return b.do(http.MethodGet, path, nil) }

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// confirm opens the confirmation page of an action and posts its form.
func (b *bundle) confirm(path string, fields url.Values) resp {
	b.t.Helper()
	page := b.get(path)
	if page.Code != http.StatusOK {
		b.t.Fatalf("GET %s: %d %s", path, page.Code, page.Body)
	}
	m := csrfRE.FindStringSubmatch(page.Body)
	if m == nil {
		b.t.Fatalf("GET %s: no CSRF token in the form:\n%s", path, page.Body)
	}
	form := url.Values{"csrf": {m[1]}, "confirm": {"yes"}}
	for k, v := range fields {
		form[k] = v
	}
	return b.do(http.MethodPost, path, form)
}

var sagaRowRE = regexp.MustCompile(`data-saga="([0-9a-f-]{36})" data-status="([a-z]+)"`)

// listed returns the sagas a list page shows, in order, with their status.
func listed(body string) (ids []string, status map[string]string) {
	status = map[string]string{}
	for _, m := range sagaRowRE.FindAllStringSubmatch(body, -1) {
		ids = append(ids, m[1])
		status[m[1]] = m[2]
	}
	return ids, status
}

var nextRE = regexp.MustCompile(`href="([^"]+)" rel="next"`)

// quietDB is a database with sagas no orchestrator runs: started with a
// client that has no Kafka, so they stay where they are.
func quietDB(t *testing.T, steps time.Duration) (*testkit.Database, *saga.Orchestrator[consoletest.Parcel]) {
	t.Helper()
	db := testkit.NewDatabase(t)
	client, err := sagabox.NewClient(db.Pool, sagabox.Config{})
	testkit.Must(t, err, "client")
	testkit.Must(t, client.Migrate(testkit.Ctx(t)), "migrate")
	def := saga.MustDefinition("parcel", 2,
		saga.Step[consoletest.Parcel]{Name: "weigh", Invoke: &saga.Invocation[consoletest.Parcel]{Topic: "scale.commands", Command: "weigh"}, Timeout: steps})
	orch, err := saga.NewOrchestrator(client, saga.Config{ReplyTopic: "parcel.replies"}, def)
	testkit.Must(t, err, "orchestrator")
	return db, orch
}

func startQuiet(t *testing.T, db *testkit.Database, orch *saga.Orchestrator[consoletest.Parcel], n int) []uuid.UUID {
	t.Helper()
	ctx := testkit.Ctx(t)
	var ids []uuid.UUID
	for i := range n {
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			id, err := orch.Start(ctx, tx, consoletest.Parcel{Parcel: "p" + string(rune('a'+i))})
			ids = append(ids, id)
			return err
		})
		testkit.Must(t, err, "start")
	}
	return ids
}

// The list shows the sagas newest first, page by page with no saga twice or
// missing, with the filters kept across pages.
func TestSagasListPagesByKeysetNewestFirst(t *testing.T) {
	t.Parallel()
	db, orch := quietDB(t, time.Hour)
	ids := startQuiet(t, db, orch, 7)
	b := serve(t, console.Config{Pool: db.Pool})
	var seen []string
	next := "/sagas?status=running&limit=3"
	pages := 0
	for next != "" {
		page := b.get(next)
		if page.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", next, page.Code, page.Body)
		}
		got, _ := listed(page.Body)
		seen = append(seen, got...)
		pages++
		next = ""
		if m := nextRE.FindStringSubmatch(page.Body); m != nil {
			next = strings.TrimPrefix(strings.ReplaceAll(m[1], "&amp;", "&"), b.srv.URL)
			if !strings.Contains(next, "status=running") || !strings.Contains(next, "limit=3") {
				t.Fatalf("the next page lost the filters: %s", next)
			}
		}
	}
	if pages != 3 {
		t.Errorf("7 sagas at 3 a page: %d pages, want 3", pages)
	}
	want := make([]string, len(ids))
	for i, id := range ids {
		want[len(ids)-1-i] = id.String() // newest first
	}
	if !slices.Equal(seen, want) {
		t.Fatalf("pages listed\n%v\nwant (newest first, each once)\n%v", seen, want)
	}
}

// Filters by status, type, "failed" and "stuck past its deadline" list only
// the sagas that match; counts per status cover the whole database.
func TestSagasFilters(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	ok := shop.StartSaga(t, consoletest.Parcel{Parcel: "ok"})
	shop.WaitStatus(t, ok, saga.StatusSucceeded)
	failed := shop.FailedSaga(t, consoletest.Parcel{Parcel: "lost"})
	b := serve(t, console.Config{Pool: shop.DB.Pool})

	cases := []struct {
		query string
		want  []string
	}{
		{"", []string{failed.String(), ok.String()}},
		{"?status=failed", []string{failed.String()}},
		{"?failed=1", []string{failed.String()}},
		{"?status=succeeded,failed", []string{failed.String(), ok.String()}},
		{"?status=succeeded&status=compensated", []string{ok.String()}},
		{"?type=shipment", []string{failed.String(), ok.String()}},
		{"?type=nosuchtype", nil},
		{"?stuck=1", nil}, // the orchestrator fires every timer
		{"?idle=1h", nil}, // nothing unfinished has been still for an hour
		{"?failed=1&type=x", nil},
	}
	for _, c := range cases {
		page := b.get("/sagas" + c.query)
		if page.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", c.query, page.Code, page.Body)
		}
		got, _ := listed(page.Body)
		if !slices.Equal(got, c.want) {
			t.Errorf("%q lists %v, want %v", c.query, got, c.want)
		}
	}
	page := b.get("/sagas?status=running")
	for _, s := range []string{`data-count="failed">failed <b>1</b>`, `data-count="succeeded">succeeded <b>1</b>`, `data-count="running">running <b>0</b>`} {
		if !strings.Contains(page.Body, s) {
			t.Errorf("the counts do not show %s", s)
		}
	}
	// The row shows the type, version, status, current step and reason.
	page = b.get("/sagas?failed=1")
	for _, s := range []string{"shipment", "v1", `badge st-failed`, "ship", "courier: no driver today"} {
		if !strings.Contains(page.Body, s) {
			t.Errorf("the failed saga's row does not show %q", s)
		}
	}
}

// "Stuck past its deadline" lists the sagas whose deadline passed with no
// orchestrator to fire it.
func TestSagasStuckPastDeadline(t *testing.T) {
	t.Parallel()
	db, orch := quietDB(t, time.Millisecond)
	stuck := startQuiet(t, db, orch, 1)[0]
	b := serve(t, console.Config{Pool: db.Pool})
	testkit.Eventually(t, 10*time.Second, "the saga's 1 ms deadline to pass", func() bool {
		got, _ := listed(b.get("/sagas?stuck=1").Body)
		return slices.Equal(got, []string{stuck.String()})
	})
	if got, _ := listed(b.get("/sagas?stuck=1&status=failed").Body); got != nil {
		t.Errorf("stuck and failed: %v, want none", got)
	}
	// No orchestrator of it ever started here: the diagram comes from the
	// saga's history and says so.
	page := b.get("/sagas/" + stuck.String())
	if page.Code != http.StatusOK || !strings.Contains(page.Body, "the steps are the ones its history shows") || !strings.Contains(page.Body, `data-step="step-0" data-state="current"`) {
		t.Errorf("a saga without a recorded definition: %d\n%s", page.Code, page.Body)
	}
}

var stepStateRE = regexp.MustCompile(`data-step="([a-z0-9-]+)" data-state="([a-z]+)"`)

func diagramStates(body string) map[string]string {
	out := map[string]string{}
	for _, m := range stepStateRE.FindAllStringSubmatch(body, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// One saga's page shows its timeline with the participant's words, its
// data, its failure and its diagram with the failed step marked.
func TestSagaPageShowsTimelineAndDiagram(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	id := shop.FailedSaga(t, consoletest.Parcel{Parcel: "p-42", To: "Lyon"})
	b := serve(t, console.Config{Pool: shop.DB.Pool})
	page := b.get("/sagas/" + id.String())
	if page.Code != http.StatusOK {
		t.Fatalf("%d %s", page.Code, page.Body)
	}
	for _, s := range []string{
		`id="saga-status">failed`, `<td>reserve</td><td>action</td><td>1</td>`, `<td>ship</td><td>action</td><td>1</td>`,
		"courier: no driver today", `out-error`, "&#34;parcel&#34;: &#34;p-42&#34;", "Lyon", `id="retry"`, `<svg class="diagram"`,
		"reserve → warehouse.commands", "pivot",
	} {
		if !strings.Contains(page.Body, s) {
			t.Errorf("the saga page does not show %q", s)
		}
	}
	if strings.Contains(page.Body, `id="abort"`) {
		t.Error("a failed saga offers abort")
	}
	states := diagramStates(page.Body)
	want := map[string]string{"step-0": "ok", "step-1": "ok", "step-2": "bad", "undo-0": "idle", "end-failed": "bad", "end-succeeded": "idle"}
	for k, v := range want {
		if states[k] != v {
			t.Errorf("diagram %s is %q, want %q (all: %v)", k, states[k], v, states)
		}
	}
}

// Retry from the console: a confirmation page, a POST with the CSRF token,
// the request recorded with who and why, and the saga succeeding once its
// orchestrator carries it out.
func TestRetryFromConsole(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	id := shop.FailedSaga(t, consoletest.Parcel{Parcel: "p-1"})
	b := serve(t, console.Config{Pool: shop.DB.Pool})
	path := "/sagas/" + id.String() + "/retry"
	res := b.confirm(path, url.Values{"operator": {"alice"}, "reason": {"the courier is back"}})
	if res.Code != http.StatusSeeOther || !strings.HasPrefix(res.Location, "/sagas/"+id.String()) {
		t.Fatalf("POST %s: %d %s %s", path, res.Code, res.Location, res.Body)
	}
	info := shop.WaitStatus(t, id, saga.StatusSucceeded)
	var got []string
	for _, a := range info.Actions {
		got = append(got, string(a.Action)+":"+string(a.Result)+":"+a.Actor+":"+a.Reason)
	}
	want := []string{"retry:requested:alice (console):the courier is back", "retry:done:alice (console):the courier is back"}
	if !slices.Equal(got, want) {
		t.Errorf("actions %v, want %v", got, want)
	}
	if !strings.Contains(b.logs.String(), `msg="console: saga action" action=retry saga_id=`+id.String()+` actor="alice (console)" reason="the courier is back"`) {
		t.Errorf("the action is not logged with who and why:\n%s", b.logs.String())
	}
	page := b.get("/sagas/" + id.String())
	for _, s := range []string{"alice (console)", "the courier is back", `id="saga-status">succeeded`} {
		if !strings.Contains(page.Body, s) {
			t.Errorf("the saga page does not show %q", s)
		}
	}
	// The name is remembered for the next confirmation.
	if !strings.Contains(b.get(path).Body, `name="operator" value="alice"`) {
		t.Error("the operator's name is not remembered")
	}
	// Retrying again is the wrong state: a clear 409, nothing changes.
	res = b.confirm(path, url.Values{"reason": {"again"}})
	if res.Code != http.StatusConflict || !strings.Contains(res.Body, "succeeded") {
		t.Errorf("retrying a succeeded saga: %d %s", res.Code, res.Body)
	}
}

// Abort needs a reason, applies to a running saga before its pivot, and
// compensates it.
func TestAbortFromConsole(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	shop.WarehouseBusy.Store(true)
	id := shop.StartSaga(t, consoletest.Parcel{Parcel: "p-2"})
	shop.WaitAttempts(t, id, 1)
	b := serve(t, console.Config{Pool: shop.DB.Pool, Operator: "ops-team"})
	path := "/sagas/" + id.String() + "/abort"
	if res := b.confirm(path, url.Values{"reason": {" "}}); res.Code != http.StatusBadRequest || !strings.Contains(res.Body, "Say why") {
		t.Fatalf("abort without a reason: %d %s", res.Code, res.Body)
	}
	res := b.confirm(path, url.Values{"reason": {"customer cancelled by phone"}})
	if res.Code != http.StatusSeeOther {
		t.Fatalf("abort: %d %s", res.Code, res.Body)
	}
	info := shop.WaitStatus(t, id, saga.StatusCompensated)
	if info.Failure == nil || info.Failure.Outcome != saga.OutcomeAborted || !strings.Contains(info.Failure.Reason, "customer cancelled by phone") {
		t.Errorf("failure %+v", info.Failure)
	}
	if len(info.Actions) == 0 || info.Actions[0].Actor != "ops-team (console)" {
		t.Errorf("actions %+v: the default operator is not recorded", info.Actions)
	}
	if res := b.confirm(path, url.Values{"reason": {"again"}}); res.Code != http.StatusConflict {
		t.Errorf("aborting a compensated saga: %d %s", res.Code, res.Body)
	}
	// A compensated saga is at step -1: with the definition, and with only
	// its history, its pages draw it, and name no current step.
	for _, forget := range []bool{false, true} {
		if forget {
			_, err := shop.DB.Pool.Exec(testkit.Ctx(t), `DELETE FROM sagabox.saga_definitions`)
			testkit.Must(t, err, "forget the definitions")
		}
		page := b.get("/sagas/" + id.String())
		states := diagramStates(page.Body)
		if page.Code != http.StatusOK || states["end-compensated"] != "ok" || states["step-0"] != "bad" || strings.Contains(page.Body, "Current step") {
			t.Errorf("compensated saga page (definition forgotten: %v): %d %v\n%s", forget, page.Code, states, page.Body)
		}
		list := b.get("/sagas")
		row := regexp.MustCompile(`(?s)data-saga="` + id.String() + `".*?</tr>`).FindString(list.Body)
		if list.Code != http.StatusOK || !strings.Contains(row, "<td></td>") {
			t.Errorf("compensated saga's row (definition forgotten: %v): %d\n%s", forget, list.Code, row)
		}
	}
}

// A state-changing POST without the CSRF token matching the browser's
// cookie is refused, and changes nothing.
func TestActionsNeedCSRFToken(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	id := shop.FailedSaga(t, consoletest.Parcel{Parcel: "p-3"})
	parked := shop.Park(t, "csrf")
	b := serve(t, console.Config{Pool: shop.DB.Pool})
	b.get("/sagas/" + id.String() + "/retry") // the browser has its CSRF cookie
	other := serve(t, console.Config{Pool: shop.DB.Pool})
	m := csrfRE.FindStringSubmatch(other.get("/sagas/" + id.String() + "/retry").Body)
	for name, form := range map[string]url.Values{
		"no token":                {"confirm": {"yes"}},
		"another console's token": {"confirm": {"yes"}, "csrf": {m[1]}},
		"a made-up token":         {"confirm": {"yes"}, "csrf": {"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}},
	} {
		for _, path := range []string{"/sagas/" + id.String() + "/retry", "/outbox/" + itoa(parked) + "/discard"} {
			if res := b.do(http.MethodPost, path, form); res.Code != http.StatusForbidden {
				t.Errorf("%s, POST %s: %d, want 403", name, path, res.Code)
			}
		}
	}
	// A POST from a client that never loaded a form has no cookie at all.
	fresh := serve(t, console.Config{Pool: shop.DB.Pool})
	if res := fresh.do(http.MethodPost, "/sagas/"+id.String()+"/retry", url.Values{"confirm": {"yes"}, "csrf": {"x"}}); res.Code != http.StatusForbidden {
		t.Errorf("no cookie: %d", res.Code)
	}
	info, err := saga.NewAdmin(shop.DB.Pool).Get(testkit.Ctx(t), id)
	testkit.Must(t, err, "get")
	if info.Request != nil || len(info.Actions) != 0 || info.Status != saga.StatusFailed {
		t.Errorf("a refused POST changed the saga: %+v %+v", info.Request, info.Actions)
	}
	var n int
	testkit.Must(t, shop.DB.Pool.QueryRow(testkit.Ctx(t), `SELECT count(*) FROM sagabox.outbox WHERE id = $1 AND parked_at IS NOT NULL`, parked).Scan(&n), "count")
	if n != 1 {
		t.Error("a refused POST discarded the parked message")
	}
}

func itoa(n int64) string { return strconvFormat(n) }

// With a token, every request needs it: as a bearer token or through the
// sign-in page's cookie.
func TestTokenRequiredOnEveryRequest(t *testing.T) {
	t.Parallel()
	db, orch := quietDB(t, time.Hour)
	id := startQuiet(t, db, orch, 1)[0]
	b := serve(t, console.Config{Pool: db.Pool, AuthToken: "s3cret-token"})
	for _, path := range []string{"/sagas", "/sagas/" + id.String(), "/outbox", "/static/console.css", "/sagas/" + id.String() + "/retry"} {
		res := b.get(path)
		if res.Code != http.StatusSeeOther || !strings.HasPrefix(res.Location, "/login?next=") {
			t.Errorf("GET %s without the token: %d %s, want a redirect to /login", path, res.Code, res.Location)
		}
		if res := b.do(http.MethodGet, path, nil, "Authorization", "Bearer wrong"); res.Code != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %d, want 401", path, res.Code)
		}
		if res := b.do(http.MethodGet, path, nil, "Authorization", "Bearer s3cret-token"); res.Code != http.StatusOK {
			t.Errorf("GET %s with the token: %d, want 200", path, res.Code)
		}
	}
	if res := b.do(http.MethodPost, "/sagas/"+id.String()+"/abort", url.Values{"confirm": {"yes"}}); res.Code != http.StatusUnauthorized {
		t.Errorf("POST without the token: %d, want 401", res.Code)
	}
	if res := b.get("/login"); res.Code != http.StatusOK || !strings.Contains(res.Body, `name="token"`) {
		t.Fatalf("login page: %d", res.Code)
	}
	if res := b.do(http.MethodPost, "/login", url.Values{"token": {"guess"}, "next": {"/sagas"}}); res.Code != http.StatusUnauthorized {
		t.Errorf("sign in with a wrong token: %d", res.Code)
	}
	if !strings.Contains(b.logs.String(), "console: sign-in refused") {
		t.Error("a refused sign-in is not logged")
	}
	res := b.do(http.MethodPost, "/login", url.Values{"token": {"s3cret-token"}, "next": {"https://evil.example/"}})
	if res.Code != http.StatusSeeOther || res.Location != "/sagas" {
		t.Errorf("sign in: %d %q, want a redirect inside the console", res.Code, res.Location)
	}
	if res := b.get("/sagas/" + id.String()); res.Code != http.StatusOK {
		t.Errorf("signed in: %d", res.Code)
	}
	// The cookie is not the token itself.
	u, _ := url.Parse(b.srv.URL)
	for _, ck := range b.http.Jar.Cookies(u) {
		if strings.Contains(ck.Value, "s3cret-token") {
			t.Errorf("cookie %s holds the token", ck.Name)
		}
	}
}

func TestCheckListen(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:8090", "", true}, {"localhost:8090", "", true}, {"[::1]:8090", "", true},
		{":8090", "", false}, {"0.0.0.0:8090", "", false}, {"10.1.2.3:8090", "", false},
		{"0.0.0.0:8090", "t", true}, {"nonsense", "", false},
	} {
		err := console.CheckListen(c.addr, c.token)
		if (err == nil) != c.ok {
			t.Errorf("CheckListen(%q, %q) = %v", c.addr, c.token, err)
		}
	}
}

// Bad input gets a 4xx page saying what is wrong, never a 500.
func TestBadInputGetsAClearMessage(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	ok := shop.StartSaga(t, consoletest.Parcel{Parcel: "ok"})
	shop.WaitStatus(t, ok, saga.StatusSucceeded)
	b := serve(t, console.Config{Pool: shop.DB.Pool})
	unknown := uuid.Must(uuid.NewV7())
	for _, c := range []struct {
		method, path string
		code         int
		says         string
	}{
		{"GET", "/sagas/not-a-uuid", 400, "is not a saga ID"},
		{"GET", "/sagas/" + unknown.String(), 404, "No saga has ID " + unknown.String()},
		{"GET", "/sagas/" + unknown.String() + "/retry", 404, "No saga has ID"},
		{"GET", "/sagas/" + ok.String() + "/explode", 404, "is not an action on a saga"},
		{"GET", "/sagas?status=bogus", 400, "is not a saga status"},
		{"GET", "/sagas?limit=0", 400, "limit"},
		{"GET", "/sagas?limit=abc", 400, "limit"},
		{"GET", "/sagas?after=garbage", 400, "page cursor"},
		{"GET", "/sagas?idle=soon", 400, "is not a duration"},
		{"GET", "/sagas?stuck=maybe", 400, "stuck"},
		{"GET", "/outbox/abc/discard", 400, "is not an outbox message ID"},
		{"GET", "/outbox/999999/discard", 404, "No parked message has ID 999999"},
		{"GET", "/outbox/1/burn", 404, "is not an action on a parked message"},
		{"GET", "/nowhere", 404, "is not a page"},
	} {
		res := b.do(c.method, c.path, nil)
		if res.Code != c.code || !strings.Contains(res.Body, c.says) {
			t.Errorf("%s %s: %d, want %d saying %q:\n%s", c.method, c.path, res.Code, c.code, c.says, res.Body)
		}
	}
	// POSTs with a valid token but bad targets.
	m := csrfRE.FindStringSubmatch(b.get("/sagas/" + ok.String() + "/retry").Body)
	for _, c := range []struct {
		path string
		code int
		says string
	}{
		{"/sagas/" + ok.String() + "/retry", 409, "only failed sagas"},
		{"/sagas/" + ok.String() + "/abort", 409, "only running sagas"},
		{"/sagas/" + unknown.String() + "/retry", 404, "No saga has ID"},
		{"/sagas/xyz/retry", 400, "is not a saga ID"},
		{"/outbox/999999/retry", 404, "No parked message"},
		{"/outbox/-4/discard", 400, "is not an outbox message ID"},
	} {
		res := b.do(http.MethodPost, c.path, url.Values{"csrf": {m[1]}, "confirm": {"yes"}, "reason": {"r"}})
		if res.Code != c.code || !strings.Contains(res.Body, c.says) {
			t.Errorf("POST %s: %d, want %d saying %q:\n%s", c.path, res.Code, c.code, c.says, res.Body)
		}
	}
}

var parkedRE = regexp.MustCompile(`data-parked="(\d+)"`)

// The outbox page shows pending messages per topic, the parked ones with
// their last error, and discards and retries them.
func TestOutboxPage(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	a, bID := shop.Park(t, "a"), shop.Park(t, "b")
	b := serve(t, console.Config{Pool: shop.DB.Pool})
	page := b.get("/outbox")
	if page.Code != http.StatusOK {
		t.Fatalf("%d %s", page.Code, page.Body)
	}
	for _, s := range []string{`id="parked">2<`, "blobs", "test.console.Blob", `id="rate-chart"`} {
		if !strings.Contains(page.Body, s) {
			t.Errorf("the outbox page does not show %q", s)
		}
	}
	if !regexp.MustCompile(`(?i)too large|max|bytes`).MatchString(page.Body) {
		t.Errorf("the outbox page does not show the last error:\n%s", page.Body)
	}
	res := b.confirm("/outbox/"+itoa(a)+"/discard", url.Values{"operator": {"bob"}, "reason": {"test blob"}})
	if res.Code != http.StatusSeeOther {
		t.Fatalf("discard: %d %s", res.Code, res.Body)
	}
	got := parkedRE.FindAllStringSubmatch(b.get("/outbox").Body, -1)
	if len(got) != 1 || got[0][1] != itoa(bID) {
		t.Errorf("after discarding %d the page lists %v", a, got)
	}
	if !strings.Contains(b.logs.String(), `msg="console: outbox action" action=discard outbox_id=`+itoa(a)+` saga_id="" actor="bob (console)" reason="test blob"`) {
		t.Errorf("the discard is not logged:\n%s", b.logs.String())
	}
	if res := b.confirm("/outbox/"+itoa(bID)+"/retry", nil); res.Code != http.StatusSeeOther {
		t.Fatalf("retry: %d %s", res.Code, res.Body)
	}
	// A message of a saga: the action goes into the saga's history.
	id := shop.StartSaga(t, consoletest.Parcel{Parcel: "p-9"})
	shop.WaitStatus(t, id, saga.StatusSucceeded)
	ofSaga := shop.ParkFor(t, "of-saga", id.String())
	if res := b.confirm("/outbox/"+itoa(ofSaga)+"/discard", url.Values{"operator": {"bob"}, "reason": {"stale"}}); res.Code != http.StatusSeeOther {
		t.Fatalf("discard: %d %s", res.Code, res.Body)
	}
	info, err := saga.NewAdmin(shop.DB.Pool).Get(testkit.Ctx(t), id)
	testkit.Must(t, err, "get")
	if len(info.Actions) != 1 || info.Actions[0].Action != saga.ActionOutboxDiscard || info.Actions[0].Actor != "bob (console)" ||
		info.Actions[0].Reason != "outbox message "+itoa(ofSaga)+": stale" || info.Status != saga.StatusSucceeded {
		t.Errorf("the saga's history: %+v", info.Actions)
	}
	// Discarding it again: it is gone.
	if res := b.get("/outbox/" + itoa(a) + "/discard"); res.Code != http.StatusNotFound {
		t.Errorf("a discarded message: %d", res.Code)
	}
}

// Pending messages per topic, with the oldest's age, in a database where
// nothing publishes.
func TestOutboxPendingPerTopic(t *testing.T) {
	t.Parallel()
	db, orch := quietDB(t, time.Hour)
	startQuiet(t, db, orch, 3)
	b := serve(t, console.Config{Pool: db.Pool})
	page := b.get("/outbox")
	if !strings.Contains(page.Body, `<td>scale.commands</td><td>3</td>`) || !strings.Contains(page.Body, `id="pending">3<`) {
		t.Errorf("the outbox page does not show 3 pending on scale.commands:\n%s", page.Body)
	}
}

// Run samples the publish rate; the chart draws it once it has two samples.
func TestPublishRateChart(t *testing.T) {
	t.Parallel()
	shop := consoletest.Start(t)
	b := serve(t, console.Config{Pool: shop.DB.Pool})
	if !strings.Contains(b.get("/outbox").Body, "measuring") {
		t.Error("the chart does not say it is measuring before its second sample")
	}
	for i := range 5 {
		shop.StartSaga(t, consoletest.Parcel{Parcel: "r" + string(rune('0'+i))})
	}
	testkit.Eventually(t, 30*time.Second, "the chart to show a rate", func() bool {
		return strings.Contains(b.get("/outbox").Body, `<polygon points=`)
	})
	c, err := console.New(console.Config{Pool: shop.DB.Pool})
	testkit.Must(t, err, "new")
	ctx, cancel := context.WithCancel(testkit.Ctx(t))
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// A database without the sagabox tables gets a page that says so.
func TestDatabaseWithoutTables(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	b := serve(t, console.Config{Pool: db.Pool})
	for _, path := range []string{"/sagas", "/outbox", "/sagas/" + uuid.NewString()} {
		res := b.get(path)
		if res.Code != http.StatusServiceUnavailable || !strings.Contains(res.Body, "run sagabox migrate") {
			t.Errorf("GET %s: %d\n%s", path, res.Code, res.Body)
		}
	}
}
