package console_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/internal/consoletest"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// ScreenshotEnv names the file TestBrowser writes the console's screenshot
// to (make screenshot sets it to docs/console.png); unset, it goes to the
// test's temporary directory.
const screenshotEnv = "SAGABOX_SCREENSHOT"

// browserPath finds Chromium: $CHROME_PATH, or Debian's chromium.
func browserPath() (string, error) {
	if p := os.Getenv("CHROME_PATH"); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no chromium on PATH (apt-get install -y chromium, or set CHROME_PATH)")
}

// noBrowser fails the test under CI, which must run it, and skips it
// elsewhere.
func noBrowser(t *testing.T, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and no browser can be started: %v", err)
	}
	t.Skipf("no browser can be started (CI would fail here): %v", err)
}

// A person in a real browser finds a failed saga, sees its timeline and
// diagram, retries it and sees it succeed; then discards a parked outbox
// message and sees it gone. Headless Chromium, driven from Go.
func TestBrowserRetryFailedSagaAndDiscardParked(t *testing.T) {
	t.Parallel()
	path, err := browserPath()
	if err != nil {
		noBrowser(t, err)
	}
	shop := consoletest.Start(t)
	for _, p := range []string{"p-100", "p-101"} {
		shop.WaitStatus(t, shop.StartSaga(t, consoletest.Parcel{Parcel: p, To: "Lisbon"}), saga.StatusSucceeded)
	}
	failed := shop.FailedSaga(t, consoletest.Parcel{Parcel: "p-102", To: "Porto"})
	parked := shop.Park(t, "oversized-report")
	c, err := console.New(console.Config{Pool: shop.DB.Pool, Refresh: time.Second, Definitions: []saga.AnyDefinition{shop.Def}})
	testkit.Must(t, err, "console")
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("headless", true), chromedp.WindowSize(1360, 1100))
	actx, cancelAlloc := chromedp.NewExecAllocator(testkit.Ctx(t), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	startCtx, cancelStart := context.WithTimeout(bctx, 60*time.Second)
	_, err = chromedp.Run(bctx, chromedp.Func(func(context.Context, *chromedp.Target) error { return startCtx.Err() }))
	cancelStart()
	if err != nil {
		noBrowser(t, err)
	}
	ctx, cancel := context.WithTimeout(bctx, 3*time.Minute)
	defer cancel()
	fail := func(what string, err error) {
		t.Helper()
		html, _ := chromedp.Run(bctx, chromedp.OuterHTML(chromedp.CSS("body")))
		t.Fatalf("%s: %v\npage:\n%s", what, err, html)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			fail(what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			fail("read "+sel, err)
		}
		return v
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	// The sagas page: find the failed saga and open it.
	do("open the sagas page", chromedp.Navigate(srv.URL+"/sagas"), chromedp.WaitVisible(css(`tr[data-status="failed"]`)))
	if counts := text(".counts"); !strings.Contains(counts, "failed 1") || !strings.Contains(counts, "succeeded 2") {
		t.Errorf("counts: %q", counts)
	}
	do("filter failed", chromedp.Click(css(`input[name="failed"]`)), chromedp.Click(css(`#filters button[type="submit"]`)),
		// The new page: its checkbox is checked in the HTML, and only the
		// failed saga is left.
		chromedp.WaitReady(css(`input[name="failed"][checked]`)), chromedp.WaitNotPresent(css(`tr[data-status="succeeded"]`)),
		chromedp.WaitVisible(css(`tr[data-saga="`+failed.String()+`"]`)))
	if loc, err := chromedp.Run(ctx, chromedp.Location()); err != nil || !strings.Contains(loc, "failed=1") {
		t.Errorf("the filter is not in the URL: %s %v", loc, err)
	}
	// Live: a saga that fails meanwhile appears by itself, one that
	// succeeds does not (the refresh keeps the filter).
	shop.WaitStatus(t, shop.StartSaga(t, consoletest.Parcel{Parcel: "p-103"}), saga.StatusSucceeded)
	later := shop.FailedSaga(t, consoletest.Parcel{Parcel: "p-104"})
	do("the refresh shows the new failed saga", chromedp.WaitVisible(css(`tr[data-saga="`+later.String()+`"]`)))
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('tr[data-saga]').length`)); err != nil || n != 2 {
		t.Errorf("the refreshed filtered list has %d rows (%v), want the 2 failed sagas", n, err)
	}
	do("open the failed saga", chromedp.Click(css(`tr[data-saga="`+failed.String()+`"] a`)), chromedp.WaitVisible(css(`#timeline`)),
		chromedp.WaitVisible(css(`#diagram g[data-step="step-2"][data-state="bad"]`)),
		chromedp.WaitVisible(css(`#diagram g[data-step="step-0"][data-state="ok"]`)))
	timeline := text("#timeline")
	for _, s := range []string{"reserve", "charge", "ship", "courier: no driver today"} {
		if !strings.Contains(timeline, s) {
			t.Errorf("the timeline does not show %q:\n%s", s, timeline)
		}
	}
	if status := text("#saga-status"); status != "failed" {
		t.Errorf("status %q", status)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		fail("screenshot", err)
	}
	shot := os.Getenv(screenshotEnv)
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "console.png")
	}
	testkit.Must(t, os.WriteFile(shot, png, 0o644), "write the screenshot")
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))

	// Retry, confirm, and watch the page turn succeeded by itself.
	do("press retry", chromedp.Click(css(`#retry`)), chromedp.WaitVisible(css(`#confirm-form`)))
	do("confirm", chromedp.SendKeys(css(`input[name="operator"]`), "browser"), chromedp.SendKeys(css(`input[name="reason"]`), "the courier is back"),
		chromedp.Click(css(`#confirm`)), chromedp.WaitVisible(css(`.notice`)))
	do("wait for succeeded", chromedp.WaitVisible(css(`#saga-status.st-succeeded`)))
	if actions := text(".actions-log"); !strings.Contains(actions, "browser (console)") || !strings.Contains(actions, "the courier is back") {
		t.Errorf("operator actions: %q", actions)
	}

	// Discard the parked message.
	row := fmt.Sprintf(`tr[data-parked="%d"]`, parked)
	do("open the outbox", chromedp.Navigate(srv.URL+"/outbox"), chromedp.WaitVisible(css(row)))
	do("press discard", chromedp.Click(css(fmt.Sprintf(`a[data-discard="%d"]`, parked))), chromedp.WaitVisible(css(`#confirm-form`)))
	do("confirm the discard", chromedp.Click(css(`#confirm`)), chromedp.WaitVisible(css(`.notice`)))
	gone, err := chromedp.Run(ctx, chromedp.Evaluate[bool](fmt.Sprintf(`document.querySelector('%s') === null`, row)))
	if err != nil || !gone {
		t.Errorf("the discarded message is still listed (%v)", err)
	}
	var n int
	testkit.Must(t, shop.DB.Pool.QueryRow(testkit.Ctx(t), `SELECT count(*) FROM sagabox.outbox WHERE id = $1`, parked).Scan(&n), "count")
	if n != 0 {
		t.Error("the discarded message is still in the outbox")
	}
}
