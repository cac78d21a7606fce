package adapters

import (
	"context"
	"strings"
	"testing"
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
