package saga

import (
	"context"
	"sync"
)

// batcher groups the work of concurrent message handlers (one per Kafka
// partition) into shared transactions: a handler submits its item and waits;
// a worker takes whatever is queued, up to max, and runs it in one
// transaction. When the system is idle a batch is one item and adds no
// delay; under load the commits, and their WAL flushes, are shared.
// batchWorkers is how many batches of one consumer run at once: while one
// commits, the next fills.
const batchWorkers = 2

type batcher[T any] struct {
	reqs chan *batchReq[T]
	max  int
	run  func(ctx context.Context, items []T) []error
	wg   sync.WaitGroup
}

type batchReq[T any] struct {
	item T
	done chan error
}

func newBatcher[T any](workers, max int, run func(ctx context.Context, items []T) []error) *batcher[T] {
	b := &batcher[T]{reqs: make(chan *batchReq[T], max*workers), max: max, run: run}
	return b
}

// start runs the workers until stop.
func (b *batcher[T]) start(ctx context.Context, workers int) (stop func()) {
	quit := make(chan struct{})
	for range workers {
		b.wg.Go(func() {
			for {
				var first *batchReq[T]
				select {
				case first = <-b.reqs:
				case <-quit:
					return
				}
				batch := []*batchReq[T]{first}
			fill:
				for len(batch) < b.max {
					select {
					case r := <-b.reqs:
						batch = append(batch, r)
					default:
						break fill
					}
				}
				items := make([]T, len(batch))
				for i, r := range batch {
					items[i] = r.item
				}
				errs := b.run(context.WithoutCancel(ctx), items)
				for i, r := range batch {
					r.done <- errs[i]
				}
			}
		})
	}
	return func() { close(quit); b.wg.Wait() }
}

// do submits item and waits for its result.
func (b *batcher[T]) do(ctx context.Context, item T) error {
	r := &batchReq[T]{item: item, done: make(chan error, 1)}
	select {
	case b.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-r.done
}
