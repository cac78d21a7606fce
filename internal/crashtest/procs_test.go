//go:build linux

package crashtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sagabox/sagabox/internal/devbroker"
)

// Generous, explicit bounds for what a loaded 2-core machine must manage.
const (
	buildTimeout = 5 * time.Minute  // go build of four mains, cold cache
	readyTimeout = 90 * time.Second // a process from exec to /readyz 200
	stopTimeout  = 60 * time.Second // SIGTERM to exit, draining
)

// moduleRoot is the directory of go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		t.Fatalf("go env GOMOD: %v %s", err, out)
	}
	return filepath.Dir(string(bytes.TrimSpace(out)))
}

// goTool is the go command that runs this test: go test puts its GOROOT's
// bin first on PATH.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

// build builds the broker's and the services' mains into dir and returns
// the binaries by name.
func build(t *testing.T, dir string) map[string]string {
	t.Helper()
	pkgs := map[string]string{
		"devbroker":      "./cmd/devbroker",
		"userservice":    "./userservice/cmd/userservice",
		"catalogservice": "./catalogservice/cmd/catalogservice",
		"orderservice":   "./orderservice/cmd/orderservice",
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, p := range pkgs {
		args = append(args, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = moduleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	bins := map[string]string{}
	for name := range pkgs {
		bins[name] = filepath.Join(dir, name)
	}
	return bins
}

// freePort is a port nobody listened on a moment ago. The services are
// restarted on the same port, so they cannot pick their own.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is one OS process of the test: started, killed, frozen, restarted.
type proc struct {
	name, bin string
	args, env []string
	logPath   string
	url       string // services: their base URL

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	stopped bool // SIGSTOPped
	starts  int
}

func (p *proc) start(t *testing.T, stdout io.Writer) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	log, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("%s log: %v", p.name, err)
	}
	fmt.Fprintf(log, "=== crashtest: start %d of %s at %s\n", p.starts+1, p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.env
	cmd.Stderr = log
	cmd.Stdout = log
	if stdout != nil {
		cmd.Stdout = stdout
	}
	// Die with the test binary, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		t.Fatalf("start %s: %v", p.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(exited)
	}()
	p.cmd, p.exited, p.stopped = cmd, exited, false
	p.starts++
}

// signal sends sig and, for SIGKILL, waits for the process to be gone.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	switch sig {
	case syscall.SIGSTOP:
		p.stopped = true
	case syscall.SIGCONT:
		p.stopped = false
	}
	p.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s %s: %v", sig, p.name, err)
	}
	if sig == syscall.SIGKILL {
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			t.Fatalf("%s still running %s after SIGKILL", p.name, stopTimeout)
		}
	}
}

// running reports whether the process has not exited.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop ends the process for good: SIGCONT if frozen, SIGTERM, SIGKILL after
// stopTimeout.
func (p *proc) stop() {
	p.mu.Lock()
	cmd, exited, stopped := p.cmd, p.exited, p.stopped
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	if stopped {
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// tail is the end of the process's log, for a failure message.
func (p *proc) tail(lines int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// awaitReady polls the service's /readyz until it answers 200, failing the
// test if the process exits or readyTimeout passes.
func (p *proc) awaitReady(t *testing.T) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		res, err := hc.Get(p.url + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if !p.running() {
			t.Fatalf("%s exited before it was ready:\n%s", p.name, p.tail(40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %s (last: %v):\n%s", p.name, readyTimeout, err, p.tail(40))
		}
		<-tick.C
	}
}

// startBroker runs cmd/devbroker and reads its addresses from the line it
// prints on stdout.
func startBroker(t *testing.T, bin, logDir string) (*proc, []string, string) {
	t.Helper()
	p := &proc{name: "devbroker", bin: bin, env: baseEnv(), logPath: filepath.Join(logDir, "devbroker.log")}
	r, w := io.Pipe()
	p.start(t, w)
	t.Cleanup(p.stop)
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(r)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, r)
	}()
	t.Cleanup(func() { _ = w.Close() })
	select {
	case line, ok := <-lines:
		if !ok {
			t.Fatalf("devbroker printed nothing:\n%s", p.tail(20))
		}
		brokers, reg, err := devbroker.ParseLine(line)
		if err != nil {
			t.Fatal(err)
		}
		return p, brokers, reg
	case <-time.After(readyTimeout):
		t.Fatalf("devbroker printed no line in %s:\n%s", readyTimeout, p.tail(20))
	}
	return nil, nil, ""
}

// baseEnv is what every process inherits: enough to run, nothing of the
// test's own configuration.
func baseEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "GORACE"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

var errStalled = errors.New("no progress")

// awaitProgress polls cond, which reports whether it is satisfied and a
// measure of progress; it fails only when the measure has not moved for
// stall (and so tolerates a slow machine that keeps moving).
func awaitProgress(ctx context.Context, stall time.Duration, cond func() (done bool, progress int64, err error)) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last, lastAt := int64(-1), time.Now()
	for {
		done, progress, err := cond()
		switch {
		case err == nil && done:
			return nil
		case progress != last:
			last, lastAt = progress, time.Now()
		case time.Since(lastAt) > stall:
			if err != nil {
				return fmt.Errorf("%w for %s (last error: %v)", errStalled, stall, err)
			}
			return fmt.Errorf("%w for %s", errStalled, stall)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
