package outbox

import (
	"context"
	"strings"
	"testing"
)

// Once StoreSchemas ran, a write is the very statement it was before
// writers could store schemas (the write path BENCHMARKS.md measures);
// before, the same statement with the schema insert and three more
// arguments.
func TestWriteAfterStoreSchemasIsThePlainInsert(t *testing.T) {
	t.Parallel()
	codec := MustCodec(`{"type":"record","name":"E","namespace":"t","fields":[{"name":"n","type":"long"}]}`)
	w, err := NewWriter(WriterConfig{Codec: codec})
	if err != nil {
		t.Fatal(err)
	}
	msg := func(key string) Message {
		return Message{Topic: "t", Key: key, Type: "t.E", Value: map[string]any{"n": int64(1)}}
	}
	cases := []struct {
		msgs []Message
		sql  string
	}{
		{[]Message{msg("k")}, insertOneKeyedSQL},
		{[]Message{msg("")}, insertOneKeylessSQL},
		{[]Message{msg("a"), msg("b")}, insertSQL},
	}
	for _, stored := range []bool{false, true} {
		w.stored.Store(stored)
		for _, c := range cases {
			st, err := w.statement(context.Background(), c.msgs)
			if err != nil {
				t.Fatal(err)
			}
			plainArgs := len(st.args)
			if !stored {
				plainArgs -= 3
				if st.sql != withSchemasSQL[c.sql] || !strings.Contains(st.sql, "outbox_schemas") {
					t.Fatalf("before StoreSchemas: got %s", st.sql)
				}
				if fps := st.args[plainArgs].([][]byte); len(fps) != 1 {
					t.Fatalf("want the one schema used stored, got %d", len(fps))
				}
			} else if st.sql != c.sql {
				t.Fatalf("after StoreSchemas: got %s, want %s", st.sql, c.sql)
			}
			if plainArgs != maxParam(c.sql) {
				t.Fatalf("%d arguments for %s", plainArgs, c.sql)
			}
		}
	}
}

// maxParam is the highest $n in sql.
func maxParam(sql string) int {
	n := 0
	for i := 0; i < len(sql); i++ {
		if sql[i] != '$' {
			continue
		}
		v := 0
		for j := i + 1; j < len(sql) && sql[j] >= '0' && sql[j] <= '9'; j++ {
			v = v*10 + int(sql[j]-'0')
		}
		n = max(n, v)
	}
	return n
}

// Tracing off costs a write nothing: no span, no allocation, and the same
// statement as before there was tracing (the per-message trace contexts
// of insertTracedSQL only when messages carry their own).
func TestUntracedWriteStartsNoSpanAndAllocatesNothing(t *testing.T) {
	codec := MustCodec(`{"type":"record","name":"E","namespace":"t","fields":[{"name":"n","type":"long"}]}`)
	w, err := NewWriter(WriterConfig{Codec: codec})
	if err != nil {
		t.Fatal(err)
	}
	msgs := []Message{{Topic: "t", Key: "a", Type: "t.E", Value: map[string]any{"n": int64(1)}},
		{Topic: "t", Key: "b", Type: "t.E", Value: map[string]any{"n": int64(1)}}}
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() {
		c, m := ctx, msgs
		if spans := w.traceWrite(&c, &m); spans != nil {
			t.Fatal("an untraced write started a span")
		}
	}); n != 0 {
		t.Fatalf("an untraced write's tracing allocates %v times, want 0", n)
	}
	w.stored.Store(true)
	st, err := w.statement(ctx, msgs)
	if err != nil || st.sql != insertSQL {
		t.Fatalf("untraced write: %v, statement %q", err, st.sql)
	}
}
