// Package ratelimit limits how often each key (an email and IP address,
// say) may do something, with one token bucket per key.
//
// The buckets live in the process: with N instances behind a load balancer
// an attacker gets N times the budget. That is enough to make online
// password guessing slow; a shared store (Postgres, Redis) is the next step
// when it is not.
package ratelimit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter holds a token bucket per key. Idle buckets are dropped, so memory
// stays bounded by the keys seen within Idle. Safe for concurrent use.
type Limiter struct {
	every time.Duration
	burst int
	idle  time.Duration
	now   func() time.Time

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// New allows burst events at once per key, then one every `every`.
func New(every time.Duration, burst int) *Limiter {
	return &Limiter{every: every, burst: burst, idle: every * time.Duration(burst+1), now: time.Now,
		buckets: map[string]*bucket{}}
}

// Allow reports whether key may act now, and if not, how long until it may.
// A refused attempt does not consume a token.
func (l *Limiter) Allow(key string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.lastSweep) > l.idle {
		for k, b := range l.buckets {
			if now.Sub(b.seen) > l.idle {
				delete(l.buckets, k)
			}
		}
		l.lastSweep = now
	}
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{lim: rate.NewLimiter(rate.Every(l.every), l.burst)}
		l.buckets[key] = b
	}
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// Len is the number of keys tracked, for tests and metrics.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
