package adapters

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
)

// Argon2idParams are the cost parameters of password hashing.
type Argon2idParams struct {
	Memory  uint32 // KiB
	Time    uint32 // passes
	Threads uint8
}

// DefaultArgon2idParams follow the OWASP Password Storage Cheat Sheet's
// first recommendation for argon2id: 19 MiB, 2 passes, 1 thread (tens of
// milliseconds per hash on a server core).
var DefaultArgon2idParams = Argon2idParams{Memory: 19 * 1024, Time: 2, Threads: 1}

const (
	saltLen = 16
	keyLen  = 32
)

// ErrBusy is Hash's answer when every sign-up hashing slot stayed taken for
// HashQueueTimeout: the caller should answer 503 with Retry-After.
var ErrBusy = errors.New("argon2id: every password hashing slot is busy")

// HashQueueTimeout is how long Hash waits for a slot before ErrBusy.
const HashQueueTimeout = 2 * time.Second

// Argon2id hashes passwords into PHC strings
// ($argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>), so the parameters travel
// with each hash and can be raised without invalidating old ones.
//
// Each hash takes Memory KiB and a core for tens of milliseconds, so the
// work is bounded, and in two separate pools: at most 2×GOMAXPROCS
// verifications (logins) and at most GOMAXPROCS/2 (at least 1) new hashes
// (sign-ups, mostly) run at once. A flood of sign-ups then queues behind
// its own few slots, and gives up after HashQueueTimeout, instead of taking
// every slot a login needs (issue 11.2: login latency went from 0.15 s to
// 9 s while 300 sign-ups hashed).
type Argon2id struct {
	p            Argon2idParams
	verifySem    chan struct{}
	hashSem      chan struct{}
	queueTimeout time.Duration
}

// NewArgon2id returns a hasher with p (DefaultArgon2idParams when zero).
func NewArgon2id(p Argon2idParams) *Argon2id {
	if p == (Argon2idParams{}) {
		p = DefaultArgon2idParams
	}
	procs := runtime.GOMAXPROCS(0)
	return &Argon2id{p: p, verifySem: make(chan struct{}, 2*procs), hashSem: make(chan struct{}, max(1, procs/2)),
		queueTimeout: HashQueueTimeout}
}

func acquire(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Hash returns the PHC string of password with a new random salt.
func (a *Argon2id) Hash(ctx context.Context, password string) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	qctx, cancel := context.WithTimeoutCause(ctx, a.queueTimeout, ErrBusy)
	err := acquire(qctx, a.hashSem)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			return "", ErrBusy
		}
		return "", err
	}
	defer func() { <-a.hashSem }()
	key := argon2.IDKey([]byte(password), salt, a.p.Time, a.p.Memory, a.p.Threads, keyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, a.p.Memory, a.p.Time, a.p.Threads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// Verify reports whether password matches the PHC string encoded, comparing
// in constant time.
func (a *Argon2id) Verify(ctx context.Context, password, encoded string) (bool, error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errors.New("argon2id: not an argon2id PHC string")
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, fmt.Errorf("argon2id: unsupported version %q", parts[2])
	}
	var p Argon2idParams
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil {
		return false, fmt.Errorf("argon2id: bad parameters %q", parts[3])
	}
	if p.Memory > 1<<20 || p.Time > 16 || p.Threads == 0 { // refuse hashes that would take the server down
		return false, fmt.Errorf("argon2id: parameters out of bounds %q", parts[3])
	}
	b64 := base64.RawStdEncoding
	salt, err := b64.DecodeString(parts[4])
	if err != nil {
		return false, errors.New("argon2id: bad salt")
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) == 0 {
		return false, errors.New("argon2id: bad hash")
	}
	if err := acquire(ctx, a.verifySem); err != nil {
		return false, err
	}
	defer func() { <-a.verifySem }()
	got := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}
