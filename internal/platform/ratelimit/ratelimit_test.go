package ratelimit

import (
	"testing"
	"time"
)

func TestBurstThenRefusedThenRefilled(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	l := New(time.Minute, 3)
	l.now = func() time.Time { return now }
	for i := range 3 {
		if ok, _ := l.Allow("a"); !ok {
			t.Fatalf("attempt %d refused within the burst", i+1)
		}
	}
	ok, wait := l.Allow("a")
	if ok || wait <= 0 || wait > time.Minute {
		t.Fatalf("4th attempt: ok=%v wait=%s, want refused with a wait up to 1m", ok, wait)
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("another key is limited by a's attempts")
	}
	now = now.Add(time.Minute)
	if ok, _ := l.Allow("a"); !ok {
		t.Fatal("not refilled after a minute")
	}
	if ok, _ := l.Allow("a"); ok {
		t.Fatal("refused attempts consumed nothing, but two attempts passed after one refill")
	}
	now = now.Add(time.Hour)
	l.Allow("c")
	if l.Len() != 1 {
		t.Fatalf("idle buckets kept: %d", l.Len())
	}
}
