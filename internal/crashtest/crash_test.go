//go:build linux

package crashtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/examples/shop/shop"
	"github.com/sagabox/sagabox/internal/testkit"
)

// The shop the test runs.
const (
	customers     = 12
	startCredit   = 60000 // cents, each customer
	workers       = 4
	orderEvery    = 100 * time.Millisecond // per worker, at most
	between       = 150                    // orders decided between two faults
	adminEmail    = "admin@crash.local"
	progressStall = 120 * time.Second // no order decided for this long during the faults: the shop is stuck
	settleStall   = 90 * time.Second  // no saga finished for this long after them: stuck
	drainStall    = 60 * time.Second  // outboxes and views stop moving
)

// products are seeded with their initial stock; stock and credit run out
// during the run, so orders are cancelled for either as well as approved.
var products = []shop.Product{
	{SKU: "CRASH-TEA", Name: "Tea", Price: 150, Stock: 3000},
	{SKU: "CRASH-MUG", Name: "Mug", Price: 420, Stock: 2000},
	{SKU: "CRASH-LAMP", Name: "Lamp", Price: 990, Stock: 1500},
	{SKU: "CRASH-POSTER", Name: "Poster", Price: 300, Stock: 40}, // runs out first
}

// timing is the order saga's step timing, given to orderservice through
// its environment.
type timing struct {
	stepTimeout time.Duration
	attempts    int
	maxBackoff  time.Duration
}

// budget is the longest a step keeps asking before its outcome counts as
// unknown: every attempt's timeout and the backoffs between them (200ms,
// doubling, capped), plus a poll interval per attempt.
func (tm timing) budget(poll time.Duration) time.Duration {
	b, backoff := time.Duration(0), 200*time.Millisecond
	for i := 0; i < tm.attempts; i++ {
		b += tm.stepTimeout + poll
		if i < tm.attempts-1 {
			b += min(backoff, tm.maxBackoff)
			backoff *= 2
		}
	}
	return b
}

// TestCrashedShopSettlesWithEveryInvariant is the crash test (see the
// package documentation).
func TestCrashedShopSettlesWithEveryInvariant(t *testing.T) {
	if os.Getenv("SAGABOX_CRASH") != "1" {
		t.Skip("the crash test takes minutes: run make test-crash (SAGABOX_CRASH=1)")
	}
	withSIGSTOP := os.Getenv("SAGABOX_CRASH_SIGSTOP") != "0"
	const poll = 100 * time.Millisecond
	// With the SIGSTOP phase the debit's budget is short and the freeze
	// outlasts it: what is checked is that a pivot whose outcome is unknown
	// keeps being asked. Without it the budget is long enough for every
	// other fault (a killed userservice is back and has rejoined its
	// consumer group well within it).
	tm := timing{stepTimeout: 15 * time.Second, attempts: 6, maxBackoff: 5 * time.Second}
	if withSIGSTOP {
		tm = timing{stepTimeout: 2 * time.Second, attempts: 3, maxBackoff: time.Second}
	}
	freeze := 3*tm.budget(poll) + 5*time.Second

	logDir := os.Getenv("SAGABOX_CRASH_LOGS")
	if logDir == "" {
		logDir = t.TempDir()
	} else if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	bins := build(t, t.TempDir())
	t.Logf("crash: built the mains in %s; logs in %s", time.Since(began).Round(time.Millisecond), logDir)

	_, brokers, registry := startBroker(t, bins["devbroker"], logDir)
	s := startShop(t, bins, logDir, brokers, registry, tm, poll)
	s.began = began
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range s.procs() {
				t.Logf("--- last lines of %s's log (%s):\n%s", p.name, p.logPath, p.tail(25))
			}
		}
	})
	s.seed(t)

	// Load, all along the faults.
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	ld := &load{shop: s}
	var loadWG sync.WaitGroup
	for w := range workers {
		loadWG.Go(func() { ld.worker(ctx, w) })
	}

	// The faults, one after another, each once the shop has decided more
	// orders since the previous one: they hit sagas in flight.
	var faults []string
	fault := func(what string) {
		faults = append(faults, what)
		s.faults = append(s.faults, faultAt{time.Now(), what})
		var pending int64
		s.query(t, s.orders, `SELECT count(*) FROM orders WHERE status = 'PENDING'`, &pending)
		t.Logf("crash: fault %d at %s, %d orders pending: %s", len(faults), time.Since(began).Round(time.Millisecond), pending, what)
	}
	progress := func(n int64) {
		t.Helper()
		from := s.decided(t)
		err := awaitProgress(context.Background(), progressStall, func() (bool, int64, error) {
			d := s.decided(t)
			return d >= from+n, d, nil
		})
		if err != nil {
			t.Fatalf("every accepted order is final: the shop decided no order for %s during the faults (%v); %s", progressStall, err, s.sagaSummary(t))
		}
	}
	kill := func(p *proc) {
		fault("SIGKILL " + p.name + ", restarted")
		p.signal(t, syscall.SIGKILL)
		p.start(t, nil)
		p.awaitReady(t)
	}
	terminate := func(p *proc) {
		n := s.terminateBackends(t, p)
		fault(fmt.Sprintf("pg_terminate_backend of %s's %d connections", p.name, n))
	}

	progress(between)
	kill(s.catalog)
	progress(between)
	terminate(s.orders)
	progress(between)
	kill(s.users)
	progress(between)
	terminate(s.catalog)
	progress(between)
	kill(s.orders)
	progress(between)
	terminate(s.users)
	progress(between)
	if withSIGSTOP {
		fault(fmt.Sprintf("SIGSTOP userservice for %s (the debit's whole retry budget is %s), then SIGCONT", freeze, tm.budget(poll)))
		s.users.signal(t, syscall.SIGSTOP)
		select { // the freeze is the fault, not a wait for a condition
		case <-time.After(freeze):
		case <-s.users.exitedCh():
		}
		s.users.signal(t, syscall.SIGCONT)
		progress(between)
	}
	terminate(s.orders)
	terminate(s.catalog)
	stopLoad()
	loadWG.Wait()
	faultsDone := time.Now()
	t.Logf("crash: load stopped at %s: %s", time.Since(began).Round(time.Millisecond), ld.summary())

	// Settle: every saga finishes, as long as sagas keep finishing.
	err := awaitProgress(context.Background(), settleStall, func() (bool, int64, error) {
		open, finished := s.sagaCounts(t)
		return open == 0, finished, nil
	})
	settled := time.Since(faultsDone)
	if err != nil {
		t.Errorf("every accepted order is final: sagas stopped finishing (%v) %s after the faults; %s", err, settled.Round(time.Millisecond), s.sagaSummary(t))
	}
	// Then the outboxes drain and the catalog's view catches up.
	err = awaitProgress(context.Background(), drainStall, func() (bool, int64, error) {
		left, lag := s.outboxRows(t), s.viewLag(t)
		return left == 0 && lag == 0, -int64(left + lag), nil
	})
	drained := time.Since(faultsDone)
	if err != nil {
		t.Logf("crash: outboxes and order views still moving after %s: %v", drained.Round(time.Millisecond), err)
	}

	st := s.snapshot(t)
	t.Logf("crash: orders accepted %d (of %d placed; %d refused, %d unanswered), approved %d, cancelled %d, pending %d; "+
		"faults injected %d; settled %s and drained %s after the faults; whole run %s",
		len(ld.accepted()), ld.placed.Load(), ld.refused.Load(), ld.unanswered.Load(),
		st.count("APPROVED"), st.count("CANCELLED"), st.count("PENDING"),
		len(faults), settled.Round(time.Millisecond), drained.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	t.Logf("crash: cancelled by reason: %s", st.reasons())
	t.Logf("crash: faults: %s", strings.Join(faults, "; "))
	st.check(t, ld.accepted())
}

// shopProcs is the running shop: the three service processes and their
// databases.
type shopProcs struct {
	users, catalog, orders *proc
	dbs                    map[*proc]*testkit.Database
	client                 *shop.Client
	adminPassword          string
	sessions               []shop.Session
	began                  time.Time // the run's start, to place events in it
	faults                 []faultAt // the faults injected, in order
}

// faultAt is when a fault was injected.
type faultAt struct {
	at   time.Time
	what string
}

func (s *shopProcs) procs() []*proc { return []*proc{s.users, s.catalog, s.orders} }

func (p *proc) exitedCh() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

func startShop(t *testing.T, bins map[string]string, logDir string, brokers []string, registry string, tm timing, poll time.Duration) *shopProcs {
	t.Helper()
	seed := make([]byte, 32)
	_, _ = rand.Read(seed)
	s := &shopProcs{dbs: map[*proc]*testkit.Database{}, adminPassword: rand.Text()}
	mk := func(name string) *proc {
		port := freePort(t)
		return &proc{name: name, bin: bins[name], logPath: filepath.Join(logDir, name+".log"),
			url: "http://127.0.0.1:" + strconv.Itoa(port), args: nil,
			env: append(baseEnv(), "HTTP_ADDR=127.0.0.1:"+strconv.Itoa(port))}
	}
	s.users, s.catalog, s.orders = mk("userservice"), mk("catalogservice"), mk("orderservice")
	jwks := s.users.url + "/.well-known/jwks.json"
	common := []string{
		"KAFKA_BROKERS=" + strings.Join(brokers, ","), "SCHEMA_REGISTRY_URL=" + registry,
		"LOG_LEVEL=info",
	}
	for _, p := range s.procs() {
		db := testkit.NewDatabase(t)
		s.dbs[p] = db
		// application_name tells the service's connections from the test's
		// when they are terminated.
		p.env = append(p.env, common...)
		p.env = append(p.env, "DATABASE_URL="+db.URL+"&application_name="+appName(p))
	}
	s.users.env = append(s.users.env,
		"JWT_SIGNING_KEY="+base64.StdEncoding.EncodeToString(seed), // tokens outlive a restart
		"ADMIN_EMAIL="+adminEmail, "ADMIN_PASSWORD="+s.adminPassword,
		"STARTING_CREDIT_CENTS="+strconv.Itoa(startCredit),
		"LOGIN_BURST=1000", "SIGNUP_BURST=1000")
	s.catalog.env = append(s.catalog.env, "JWKS_URL="+jwks)
	s.orders.env = append(s.orders.env, "JWKS_URL="+jwks, "CATALOG_URL="+s.catalog.url,
		"CATALOG_TIMEOUT=30s", "MAX_PENDING_ORDERS=100000",
		"SAGA_POLL_INTERVAL="+poll.String(),
		"SAGA_STEP_TIMEOUT="+tm.stepTimeout.String(),
		"SAGA_STEP_ATTEMPTS="+strconv.Itoa(tm.attempts),
		"SAGA_STEP_MAX_BACKOFF="+tm.maxBackoff.String())
	for _, p := range s.procs() {
		p.start(t, nil)
		t.Cleanup(p.stop)
		p.awaitReady(t) // userservice first: the others fetch its keys
	}
	s.client = &shop.Client{UsersURL: s.users.url, CatalogURL: s.catalog.url, OrdersURL: s.orders.url,
		HTTP: &http.Client{Timeout: 30 * time.Second}}
	return s
}

func appName(p *proc) string { return "crashtest_" + p.name }

// seed adds the products and signs the customers up.
func (s *shopProcs) seed(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin, err := s.client.Login(ctx, adminEmail, s.adminPassword)
	testkit.Must(t, err, "log in as the admin")
	for _, p := range products {
		testkit.Must(t, s.client.AddProduct(ctx, admin.Token, p), "add product %s", p.SKU)
	}
	for i := range customers {
		c, err := s.client.Customer(ctx, fmt.Sprintf("crash-%d-%s@example.com", i, uuid.NewString()[:8]), "Crash")
		testkit.Must(t, err, "customer %d", i)
		s.sessions = append(s.sessions, c)
	}
}

// decided counts the orders the shop has decided.
func (s *shopProcs) decided(t *testing.T) int64 {
	t.Helper()
	var n int64
	s.query(t, s.orders, `SELECT count(*) FROM orders WHERE status <> 'PENDING'`, &n)
	return n
}

// sagaCounts: sagas not finished (running, compensating, or failed, which
// waits for an operator), and finished ones.
func (s *shopProcs) sagaCounts(t *testing.T) (open, finished int64) {
	t.Helper()
	s.query(t, s.orders, `SELECT count(*) FILTER (WHERE finished_at IS NULL OR status = 'failed'),
		count(*) FILTER (WHERE finished_at IS NOT NULL AND status <> 'failed') FROM sagabox.sagas`, &open, &finished)
	return open, finished
}

// sagaSummary says where the unfinished sagas are, for a failure message.
func (s *shopProcs) sagaSummary(t *testing.T) string {
	t.Helper()
	rows, err := s.dbs[s.orders].Pool.Query(context.Background(), `SELECT status, step, left(last_error, 120), count(*),
		min(updated_at), max(updated_at)
		FROM sagabox.sagas WHERE finished_at IS NULL OR status = 'failed' GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 10`)
	if err != nil {
		return "sagas: " + err.Error()
	}
	defer rows.Close()
	var parts []string
	for rows.Next() {
		var status, lastErr string
		var step, n int
		var first, last time.Time
		if err := rows.Scan(&status, &step, &lastErr, &n, &first, &last); err != nil {
			return "sagas: " + err.Error()
		}
		parts = append(parts, fmt.Sprintf("%d %s at step %d (%q), last changed between %s and %s into the run",
			n, status, step, lastErr, first.Sub(s.began).Round(time.Second), last.Sub(s.began).Round(time.Second)))
	}
	if len(parts) == 0 {
		return "no unfinished saga"
	}
	return "unfinished sagas: " + strings.Join(parts, ", ") + "; failed sagas by the last fault before they failed: " + s.failedByFault(t)
}

// failedByFault counts the failed sagas by the fault injected last before
// each failed, to tell which fault left them failed.
func (s *shopProcs) failedByFault(t *testing.T) string {
	t.Helper()
	rows, err := s.dbs[s.orders].Pool.Query(context.Background(), `SELECT updated_at FROM sagabox.sagas WHERE status = 'failed'`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	by := make([]int, len(s.faults)+1) // 0: before any fault
	for rows.Next() {
		var at time.Time
		if err := rows.Scan(&at); err != nil {
			return err.Error()
		}
		i := 0
		for j, f := range s.faults {
			if !at.Before(f.at) {
				i = j + 1
			}
		}
		by[i]++
	}
	var parts []string
	for i, n := range by {
		switch {
		case n == 0:
		case i == 0:
			parts = append(parts, fmt.Sprintf("%d before any fault", n))
		default:
			parts = append(parts, fmt.Sprintf("%d after fault %d (%s)", n, i, s.faults[i-1].what))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// outboxRows counts the rows left in the three outboxes.
func (s *shopProcs) outboxRows(t *testing.T) int {
	t.Helper()
	total := 0
	for _, p := range s.procs() {
		var n int
		s.query(t, p, `SELECT count(*) FROM sagabox.outbox`, &n)
		total += n
	}
	return total
}

// viewLag counts the orders whose catalog view does not show their status
// yet.
func (s *shopProcs) viewLag(t *testing.T) int {
	t.Helper()
	statuses := map[string]string{}
	rows, err := s.dbs[s.orders].Pool.Query(context.Background(), `SELECT id::text, status FROM orders`)
	testkit.Must(t, err, "orders")
	for rows.Next() {
		var id, st string
		testkit.Must(t, rows.Scan(&id, &st), "scan")
		statuses[id] = st
	}
	rows.Close()
	rows, err = s.dbs[s.catalog].Pool.Query(context.Background(), `SELECT order_id, status FROM order_views`)
	testkit.Must(t, err, "order views")
	defer rows.Close()
	for rows.Next() {
		var id, st string
		testkit.Must(t, rows.Scan(&id, &st), "scan")
		if statuses[id] == st {
			delete(statuses, id)
		}
	}
	return len(statuses)
}

// terminateBackends ends every database connection of p's service. A
// service that has none open at that moment (its pool just lost them all)
// gets a few seconds to open one again.
func (s *shopProcs) terminateBackends(t *testing.T, p *proc) int {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := s.dbs[p].Pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1`, appName(p)).Scan(&n)
		cancel()
		testkit.Must(t, err, "pg_terminate_backend of %s", p.name)
		if n > 0 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("pg_terminate_backend: %s has had no connection to terminate for 30s (is application_name set?)", p.name)
		}
		<-tick.C
	}
}

// query runs a one-row query on p's database with the test's own pool,
// retrying once: the test's connections are not the ones terminated, but a
// busy server may drop one.
func (s *shopProcs) query(t *testing.T, p *proc, sql string, dest ...any) {
	t.Helper()
	query(t, s.dbs[p], sql, dest...)
}

func query(t *testing.T, db *testkit.Database, sql string, dest ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := db.Pool.QueryRow(ctx, sql).Scan(dest...)
	if err != nil {
		err = db.Pool.QueryRow(ctx, sql).Scan(dest...)
	}
	testkit.Must(t, err, "query %s on %s", sql, db.Name)
}

// load places orders from several workers, each as a client would: with an
// Idempotency-Key, retried with the same key until the shop answers.
type load struct {
	shop       *shopProcs
	mu         sync.Mutex
	ids        map[string]bool
	placed     atomic.Int64 // orders tried (one key each)
	refused    atomic.Int64 // a 4xx other than 429: not accepted
	unanswered atomic.Int64 // no 202 nor 4xx before the load stopped
}

func (l *load) accepted() map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.ids)
}

func (l *load) summary() string {
	return fmt.Sprintf("placed %d, accepted %d, refused %d, unanswered %d",
		l.placed.Load(), len(l.accepted()), l.refused.Load(), l.unanswered.Load())
}

func (l *load) worker(ctx context.Context, w int) {
	rnd := mrand.New(mrand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
	hc := &http.Client{Timeout: 10 * time.Second}
	pace := time.NewTicker(orderEvery)
	defer pace.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-pace.C:
		}
		c := l.shop.sessions[rnd.IntN(len(l.shop.sessions))]
		var lines []shop.Line
		for _, i := range rnd.Perm(len(products))[:1+rnd.IntN(2)] {
			lines = append(lines, shop.Line{SKU: products[i].SKU, Quantity: 1 + rnd.IntN(3)})
		}
		l.placed.Add(1)
		key := uuid.NewString()
		// Retry with the same key while the shop is down or busy, also a
		// little past the end of the load: a key the order may have been
		// stored under is answered, not forgotten.
		retryUntil := time.Time{}
		for {
			id, status := l.place(hc, c.Token, key, lines)
			if id != "" {
				l.mu.Lock()
				if l.ids == nil {
					l.ids = map[string]bool{}
				}
				l.ids[id] = true
				l.mu.Unlock()
				break
			}
			if status >= 400 && status < 500 && status != http.StatusTooManyRequests {
				l.refused.Add(1)
				break
			}
			if ctx.Err() != nil {
				if retryUntil.IsZero() {
					retryUntil = time.Now().Add(30 * time.Second)
				} else if time.Now().After(retryUntil) {
					l.unanswered.Add(1)
					break
				}
			}
			<-pace.C // pace the retries too
		}
	}
}

// place POSTs one order; it returns the order's ID on a 202, else the
// status (0: no answer).
func (l *load) place(hc *http.Client, token, key string, lines []shop.Line) (string, int) {
	body, _ := json.Marshal(map[string]any{"items": lines})
	req, err := http.NewRequest(http.MethodPost, l.shop.orders.url+"/orders", bytes.NewReader(body))
	if err != nil {
		return "", 0
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Idempotency-Key", key)
	res, err := hc.Do(req)
	if err != nil {
		return "", 0
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(res.Body, 1<<16))
	if res.StatusCode != http.StatusAccepted {
		return "", res.StatusCode
	}
	var out struct {
		OrderID string `json:"orderId"`
	}
	if json.Unmarshal(raw, &out) != nil || out.OrderID == "" {
		return "", 0
	}
	return out.OrderID, res.StatusCode
}

// state is everything the invariants are checked on, read from the three
// databases once the shop has settled.
type state struct {
	orders       map[string]order
	stock        map[string]int         // sku -> stock now
	reservations map[string]reservation // order -> reservation
	credit       map[string]int64       // user -> credit now
	charges      map[string]charge      // order -> charge
	views        map[string]view        // order -> catalog's view
	outbox       map[string]int         // service -> rows left
}

type order struct {
	user, status, reason string
	items                map[string]int
	total                int64
}

type reservation struct {
	status string
	lines  map[string]int
}

type charge struct {
	user, status string
	amount       int64
}

type view struct {
	user, status string
	total        int64
}

func (st *state) count(status string) int {
	n := 0
	for _, o := range st.orders {
		if o.status == status {
			n++
		}
	}
	return n
}

func (st *state) reasons() string {
	by := map[string]int{}
	for _, o := range st.orders {
		if o.status == "CANCELLED" {
			by[o.reason]++
		}
	}
	var parts []string
	for r, n := range by {
		parts = append(parts, fmt.Sprintf("%q %d", r, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func lineMap(raw []byte) (map[string]int, error) {
	var lines []struct {
		SKU      string `json:"sku"`
		Quantity int    `json:"quantity"`
	}
	if err := json.Unmarshal(raw, &lines); err != nil {
		return nil, err
	}
	m := map[string]int{}
	for _, l := range lines {
		m[l.SKU] += l.Quantity
	}
	return m, nil
}

func (s *shopProcs) snapshot(t *testing.T) *state {
	t.Helper()
	ctx := context.Background()
	st := &state{orders: map[string]order{}, stock: map[string]int{}, reservations: map[string]reservation{},
		credit: map[string]int64{}, charges: map[string]charge{}, views: map[string]view{}, outbox: map[string]int{}}
	each := func(db *testkit.Database, sql string, scan func(rowScan func(...any) error) error) {
		t.Helper()
		rows, err := db.Pool.Query(ctx, sql)
		testkit.Must(t, err, "query %s", sql)
		defer rows.Close()
		for rows.Next() {
			testkit.Must(t, scan(rows.Scan), "scan %s", sql)
		}
		testkit.Must(t, rows.Err(), "rows %s", sql)
	}
	each(s.dbs[s.orders], `SELECT id::text, user_id::text, status, reason, items, total_cents FROM orders`, func(scan func(...any) error) error {
		var id string
		var o order
		var items []byte
		if err := scan(&id, &o.user, &o.status, &o.reason, &items, &o.total); err != nil {
			return err
		}
		var err error
		o.items, err = lineMap(items)
		st.orders[id] = o
		return err
	})
	each(s.dbs[s.catalog], `SELECT sku, stock FROM products`, func(scan func(...any) error) error {
		var sku string
		var n int
		err := scan(&sku, &n)
		st.stock[sku] = n
		return err
	})
	each(s.dbs[s.catalog], `SELECT order_id, status, lines FROM stock_reservations`, func(scan func(...any) error) error {
		var id string
		var r reservation
		var lines []byte
		if err := scan(&id, &r.status, &lines); err != nil {
			return err
		}
		var err error
		r.lines, err = lineMap(lines)
		st.reservations[id] = r
		return err
	})
	each(s.dbs[s.catalog], `SELECT order_id, user_id, status, total_cents FROM order_views`, func(scan func(...any) error) error {
		var id string
		var v view
		err := scan(&id, &v.user, &v.status, &v.total)
		st.views[id] = v
		return err
	})
	each(s.dbs[s.users], `SELECT id::text, credit_cents FROM users WHERE role = 'user'`, func(scan func(...any) error) error {
		var id string
		var c int64
		err := scan(&id, &c)
		st.credit[id] = c
		return err
	})
	each(s.dbs[s.users], `SELECT order_id, user_id, status, amount_cents FROM credit_charges`, func(scan func(...any) error) error {
		var id string
		var c charge
		err := scan(&id, &c.user, &c.status, &c.amount)
		st.charges[id] = c
		return err
	})
	for _, p := range s.procs() {
		var n int
		s.query(t, p, `SELECT count(*) FROM sagabox.outbox`, &n)
		st.outbox[p.name] = n
	}
	return st
}

// check asserts every invariant on the settled shop, each failure naming
// the invariant it breaks.
func (st *state) check(t *testing.T, accepted map[string]bool) {
	t.Helper()
	report := func(invariant string, problems []string) {
		t.Helper()
		if len(problems) == 0 {
			t.Logf("crash: invariant holds: %s", invariant)
			return
		}
		sort.Strings(problems)
		n := len(problems)
		if n > 10 {
			problems = append(problems[:10], fmt.Sprintf("... and %d more", n-10))
		}
		t.Errorf("invariant broken: %s: %d problems:\n  %s", invariant, n, strings.Join(problems, "\n  "))
	}

	// Every accepted order is final.
	var p []string
	for id := range accepted {
		o, ok := st.orders[id]
		switch {
		case !ok:
			p = append(p, fmt.Sprintf("order %s was accepted (202) but is not stored", id))
		case o.status != "APPROVED" && o.status != "CANCELLED":
			p = append(p, fmt.Sprintf("order %s is %s", id, o.status))
		}
	}
	for id, o := range st.orders {
		if !accepted[id] && o.status != "APPROVED" && o.status != "CANCELLED" {
			p = append(p, fmt.Sprintf("order %s (its 202 was lost) is %s", id, o.status))
		}
	}
	report("every accepted order is final (APPROVED or CANCELLED)", p)

	// Stock: taken for approved orders only, exactly their quantities.
	p = nil
	approvedQty := map[string]int{}
	for id, o := range st.orders {
		r, ok := st.reservations[id]
		switch {
		case o.status == "APPROVED" && (!ok || r.status != "RESERVED"):
			p = append(p, fmt.Sprintf("approved order %s has reservation %+v", id, r))
		case o.status == "APPROVED" && !equalLines(r.lines, o.items):
			p = append(p, fmt.Sprintf("approved order %s reserved %v for items %v", id, r.lines, o.items))
		case o.status != "APPROVED" && ok && r.status == "RESERVED":
			p = append(p, fmt.Sprintf("%s order %s still holds a reservation of %v", o.status, id, r.lines))
		}
		if o.status == "APPROVED" {
			for sku, q := range o.items {
				approvedQty[sku] += q
			}
		}
	}
	for id, r := range st.reservations {
		if _, ok := st.orders[id]; !ok && r.status == "RESERVED" {
			p = append(p, fmt.Sprintf("reservation for unknown order %s", id))
		}
	}
	for _, pr := range products {
		if taken := pr.Stock - st.stock[pr.SKU]; taken != approvedQty[pr.SKU] {
			p = append(p, fmt.Sprintf("%s: %d taken from stock (%d -> %d), approved orders hold %d", pr.SKU, taken, pr.Stock, st.stock[pr.SKU], approvedQty[pr.SKU]))
		}
	}
	report("stock is conserved per product (reserved only for approved orders, exactly their quantities)", p)

	// Credit: debited for approved orders only, exactly their totals.
	p = nil
	approvedCents := map[string]int64{}
	for id, o := range st.orders {
		c, ok := st.charges[id]
		switch {
		case o.status == "APPROVED" && (!ok || c.status != "DEBITED" || c.amount != o.total || c.user != o.user):
			p = append(p, fmt.Sprintf("approved order %s of %d cents has charge %+v", id, o.total, c))
		case o.status != "APPROVED" && ok && c.status == "DEBITED":
			p = append(p, fmt.Sprintf("%s order %s was debited %d cents", o.status, id, c.amount))
		}
		if o.status == "APPROVED" {
			approvedCents[o.user] += o.total
		}
	}
	for id, c := range st.charges {
		if _, ok := st.orders[id]; !ok && c.status == "DEBITED" {
			p = append(p, fmt.Sprintf("debit for unknown order %s", id))
		}
	}
	for user, credit := range st.credit {
		if spent := startCredit - credit; spent != approvedCents[user] {
			p = append(p, fmt.Sprintf("user %s: %d cents debited (%d -> %d), approved orders total %d", user, spent, startCredit, credit, approvedCents[user]))
		}
	}
	report("credit is conserved per user (debited only for approved orders, exactly their totals)", p)

	// No effect twice: the balances moved by exactly what the ledgers
	// record, one row per order.
	p = nil
	reservedQty := map[string]int{}
	for _, r := range st.reservations {
		if r.status == "RESERVED" {
			for sku, q := range r.lines {
				reservedQty[sku] += q
			}
		}
	}
	for _, pr := range products {
		if taken := pr.Stock - st.stock[pr.SKU]; taken != reservedQty[pr.SKU] {
			p = append(p, fmt.Sprintf("%s: stock moved by %d, reservations hold %d", pr.SKU, taken, reservedQty[pr.SKU]))
		}
	}
	debited := map[string]int64{}
	for _, c := range st.charges {
		if c.status == "DEBITED" {
			debited[c.user] += c.amount
		}
	}
	for user, credit := range st.credit {
		if spent := startCredit - credit; spent != debited[user] {
			p = append(p, fmt.Sprintf("user %s: credit moved by %d, charges hold %d", user, spent, debited[user]))
		}
	}
	report("no effect applied twice (stock and credit moved by exactly the reservations and charges recorded)", p)

	// The catalog's order view agrees with each order.
	p = nil
	for id, o := range st.orders {
		v, ok := st.views[id]
		switch {
		case !ok:
			p = append(p, fmt.Sprintf("order %s (%s) has no catalog view", id, o.status))
		case v.status != o.status || v.user != o.user || (o.status == "APPROVED" && v.total != o.total):
			p = append(p, fmt.Sprintf("order %s is %s of %d cents for %s, the catalog shows %s of %d for %s", id, o.status, o.total, o.user, v.status, v.total, v.user))
		}
	}
	report("the catalog's order view agrees with each order", p)

	p = nil
	for name, n := range st.outbox {
		if n != 0 {
			p = append(p, fmt.Sprintf("%s: %d rows left in sagabox.outbox", name, n))
		}
	}
	report("all three outboxes drain (sagabox.outbox empty)", p)
}

func equalLines(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	return !slices.ContainsFunc(keys, func(k string) bool { return a[k] != b[k] })
}
