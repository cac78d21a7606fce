package lifecycle

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestBackStopsAfterFront(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var order []string
	record := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	part := func(name string, drain time.Duration) Part {
		return func(ctx context.Context) error {
			<-ctx.Done()
			time.Sleep(drain)
			record(name)
			return nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- Run(ctx, []Part{part("http", 50*time.Millisecond), part("consumer", 10*time.Millisecond)}, []Part{part("relay", 0)})
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(order) != 3 || order[2] != "relay" {
		t.Fatalf("stop order %v: the relay must stop last", order)
	}
}

func TestAFailingPartStopsTheOthers(t *testing.T) {
	t.Parallel()
	boom := errors.New("listen: address in use")
	waiting := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	err := Run(context.Background(), []Part{waiting, func(context.Context) error { return boom }}, []Part{waiting})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
}
