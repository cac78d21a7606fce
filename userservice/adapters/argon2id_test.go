package adapters

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestArgon2idHashesAndVerifies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := NewArgon2id(Argon2idParams{Memory: 64, Time: 1, Threads: 1})
	enc, err := h.Hash(ctx, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(enc, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("not a PHC string: %s", enc)
	}
	enc2, _ := h.Hash(ctx, "correct horse")
	if enc == enc2 {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	if ok, err := h.Verify(ctx, "correct horse", enc); !ok || err != nil {
		t.Fatalf("right password: %v %v", ok, err)
	}
	// Every byte counts (bcrypt would ignore bytes past 72).
	long := strings.Repeat("a", 100)
	encLong, _ := h.Hash(ctx, long+"1")
	if ok, _ := h.Verify(ctx, long+"2", encLong); ok {
		t.Fatal("passwords differing after byte 100 match")
	}
	for _, wrong := range []string{"correct horsE", "", "correct horse "} {
		if ok, _ := h.Verify(ctx, wrong, enc); ok {
			t.Errorf("wrong password %q accepted", wrong)
		}
	}
	for _, bad := range []string{"", "$2a$10$bcrypt", strings.Replace(enc, "m=64", "m=99999999", 1)} {
		if ok, err := h.Verify(ctx, "correct horse", bad); ok || err == nil {
			t.Errorf("malformed hash %q: %v %v", bad, ok, err)
		}
	}
}

// Issue 11.2: sign-up hashing has its own few slots. With every one of
// them taken (a flood of sign-ups), a login's verification still runs at
// once, and one more sign-up gives up with ErrBusy instead of queueing
// without end.
func TestSignUpHashingCannotTakeTheLoginSlots(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := NewArgon2id(Argon2idParams{Memory: 64, Time: 1, Threads: 1})
	h.queueTimeout = 50 * time.Millisecond
	enc, err := h.Hash(ctx, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	for range cap(h.hashSem) { // the sign-ups in flight
		h.hashSem <- struct{}{}
	}
	// Generous: a verification takes microseconds at these costs; only a
	// shared slot would make it wait, and then for ever.
	vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if ok, err := h.Verify(vctx, "correct horse", enc); !ok || err != nil {
		t.Fatalf("login while sign-ups hold every hashing slot: %v %v", ok, err)
	}
	if _, err := h.Hash(ctx, "another one"); !errors.Is(err, ErrBusy) {
		t.Fatalf("sign-up with every hashing slot taken: %v, want ErrBusy", err)
	}
}
