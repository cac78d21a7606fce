package saga

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// FinishedChannel is the Postgres NOTIFY channel on which an orchestrator
// announces each saga it finishes (succeeded, compensated or failed): the
// notification's payload is the saga's ID, sent by the transaction that
// finished it, so it arrives only once that state is committed. Nothing
// else notifies: running sagas cost no notification.
const FinishedChannel = "sagabox_saga_finished"

// Waiter lets a request wait for a saga to finish without polling: one
// connection per process LISTENs on FinishedChannel and wakes the waiters
// of the sagas named. A service uses it to answer a client with the
// outcome instead of "pending" (HTTP `Prefer: wait`, a long poll), from
// any instance: the notification comes from whichever orchestrator
// finished the saga, in this process or another.
//
// Build one with NewWaiter; the runtime's Run runs it.
type Waiter struct {
	pool *pgxpool.Pool
	log  *slog.Logger
	once runOnce

	mu      sync.Mutex
	ready   chan struct{} // closed while LISTEN is in effect
	waiters map[uuid.UUID]map[*waiting]struct{}
}

type waiting struct{ wake chan struct{} }

// NewWaiter builds a Waiter on rt's database and attaches it to rt (also
// without brokers: it needs only Postgres).
func NewWaiter(rt Runtime) (*Waiter, error) {
	if rt == nil {
		return nil, fmt.Errorf("%w: NewWaiter needs a Runtime (a sagabox.Client)", ErrInvalidConfig)
	}
	w := &Waiter{pool: rt.Pool(), log: rt.Logger(), ready: make(chan struct{}), waiters: map[uuid.UUID]map[*waiting]struct{}{}}
	if err := rt.Attach("saga.waiter", w.Run); err != nil {
		return nil, err
	}
	return w, nil
}

// Run holds the listening connection until ctx is done, reconnecting
// (and waking every waiter to look again, since notifications sent while
// it was down are lost) when the connection breaks. It can be called
// once; the runtime's Run calls it.
func (w *Waiter) Run(ctx context.Context) error {
	if err := w.once.start("saga.Waiter"); err != nil {
		return err
	}
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := w.listen(ctx)
		if ctx.Err() != nil {
			break
		}
		w.log.Warn("saga: the waiter's LISTEN connection failed; reconnecting", "error", err, "backoff", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	return nil
}

// listen LISTENs on one connection and dispatches until it fails or ctx
// ends.
func (w *Waiter) listen(ctx context.Context) error {
	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// The connection leaves the pool for good: a pooled connection that
	// still listened would buffer notifications nobody reads.
	pc := conn.Hijack()
	defer pc.Close(context.WithoutCancel(ctx)) //nolint:errcheck // closing a connection we are done with
	if _, err := pc.Exec(ctx, `LISTEN `+FinishedChannel); err != nil {
		return err
	}
	w.mu.Lock()
	close(w.ready)
	for _, ws := range w.waiters { // notifications may have been missed: look again
		for wt := range ws {
			wt.signal()
		}
	}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.ready = make(chan struct{})
		w.mu.Unlock()
	}()
	for {
		n, err := pc.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		id, err := uuid.Parse(n.Payload)
		if err != nil {
			continue // not ours
		}
		w.mu.Lock()
		for wt := range w.waiters[id] {
			wt.signal()
		}
		w.mu.Unlock()
	}
}

func (wt *waiting) signal() {
	select {
	case wt.wake <- struct{}{}:
	default: // already woken
	}
}

// Wait returns the saga once it has finished. If ctx ends first, it
// returns the saga as last read (nil if it was never read) with ctx's
// error: a caller that waited long enough answers with the state so far.
// An unknown ID is ErrNotFound at once. A saga retried by an operator
// after it failed is waited for again.
//
// Wait needs the Waiter running (the runtime's Run); until then it waits
// for it, or for ctx.
func (w *Waiter) Wait(ctx context.Context, id uuid.UUID) (*Info, error) {
	wt := &waiting{wake: make(chan struct{}, 1)}
	w.mu.Lock()
	if w.waiters[id] == nil {
		w.waiters[id] = map[*waiting]struct{}{}
	}
	w.waiters[id][wt] = struct{}{}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.waiters[id], wt)
		if len(w.waiters[id]) == 0 {
			delete(w.waiters, id)
		}
		w.mu.Unlock()
	}()

	var last *Info
	for {
		w.mu.Lock()
		ready := w.ready
		w.mu.Unlock()
		select {
		case <-ready:
		case <-ctx.Done():
			return last, ctx.Err()
		}
		info, err := get(ctx, w.pool, id)
		switch {
		case errors.Is(err, ErrNotFound):
			return nil, err
		case err != nil && ctx.Err() != nil:
			return last, ctx.Err()
		case err != nil:
			return last, err
		}
		last = info
		if info.Status.Finished() {
			return info, nil
		}
		select {
		case <-wt.wake:
		case <-ctx.Done():
			return last, ctx.Err()
		}
	}
}
