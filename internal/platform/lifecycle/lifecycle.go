// Package lifecycle runs a service's long-running parts and shuts them down
// in the order that loses nothing.
package lifecycle

import (
	"context"
	"errors"
	"sync"
)

// Part is a long-running part: it blocks until ctx is done, drains, and
// returns nil on a clean stop.
type Part func(ctx context.Context) error

// Run runs front (HTTP server, consumers: what accepts work) and back (the
// outbox relay: what delivers the results) until ctx is done or a part
// fails. It then stops the front parts first and waits for them, and only
// then stops the back parts, so that the replies and events the last
// requests and messages wrote to the outbox are still published before the
// process exits. It returns the first error of any part.
func Run(ctx context.Context, front, back []Part) error {
	frontCtx, stopFront := context.WithCancel(ctx)
	defer stopFront()
	backCtx, stopBack := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBack()

	var (
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		if err == nil || errors.Is(err, context.Canceled) {
			return
		}
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		stopFront() // one part failing stops the service
	}
	var backWG sync.WaitGroup
	for _, p := range back {
		backWG.Add(1)
		go func() { defer backWG.Done(); fail(p(backCtx)) }()
	}
	var frontWG sync.WaitGroup
	for _, p := range front {
		frontWG.Add(1)
		go func() { defer frontWG.Done(); fail(p(frontCtx)) }()
	}
	<-frontCtx.Done()
	frontWG.Wait()
	stopBack()
	backWG.Wait()
	return firstErr
}
