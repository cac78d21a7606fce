package schemas

import (
	"io/fs"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// Every current schema must read data written with every version released
// before it. Test registries do not enforce this, so this test does.
func TestEverySchemaIsBackwardCompatibleWithItsHistory(t *testing.T) {
	current, err := load(files, ".")
	if err != nil {
		t.Fatal(err)
	}
	sagaDefs, err := load(sagaFiles, "saga")
	if err != nil {
		t.Fatal(err)
	}
	current = append(current, sagaDefs...)
	byName := map[string]def{}
	for _, d := range current {
		if _, dup := byName[d.FullName]; dup {
			t.Fatalf("two files define %s", d.FullName)
		}
		byName[d.FullName] = d
	}
	dirs, err := fs.ReadDir(history, "history")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, dir := range dirs {
		cur, ok := byName[dir.Name()]
		if !ok {
			t.Errorf("history/%s has no current schema: a schema that consumers may still read was removed", dir.Name())
			continue
		}
		old, err := load(history, path.Join("history", dir.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if len(old) == 0 {
			t.Errorf("history/%s is empty", dir.Name())
		}
		for _, o := range old {
			if o.FullName != cur.FullName {
				t.Errorf("%s defines %s, want %s", o.File, o.FullName, cur.FullName)
				continue
			}
			if err := outbox.CheckBackward(cur.Definition, o.Definition); err != nil {
				t.Errorf("%s is not BACKWARD compatible with %s: %v", cur.File, o.File, err)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("no historical version was checked: the test would pass whatever the schemas are")
	}
}

// The check above must be able to fail: each change here is a classic
// incompatible evolution, and outbox.CheckBackward must refuse it.
func TestCheckBackwardRefusesIncompatibleChanges(t *testing.T) {
	v1, _ := Definition(NameOrderCancelled)
	cases := map[string]string{
		"new field without default": strings.Replace(v1, `{"name": "reason"`,
			`{"name": "refund_cents", "type": "long"}, {"name": "reason"`, 1),
		"type changed": strings.Replace(v1, `{"name": "reason", "type": "string"`, `{"name": "reason", "type": "int"`, 1),
	}
	for name, bad := range cases {
		if bad == v1 {
			t.Fatalf("%s: the replacement did not apply; fix the test", name)
		}
		if err := outbox.CheckBackward(bad, v1); err == nil {
			t.Errorf("%s: accepted as BACKWARD compatible", name)
		}
	}
	// And a compatible change is accepted, so the check is not just failing.
	good := strings.Replace(v1, `{"name": "reason"`,
		`{"name": "refund_cents", "type": "long", "default": 0}, {"name": "reason"`, 1)
	if err := outbox.CheckBackward(good, v1); err != nil {
		t.Errorf("adding a field with a default was refused: %v", err)
	}
}

// The historical OrderCreated (no prices) decodes with the current generated
// type, the defaults filling the new fields.
func TestOldOrderCreatedDecodesIntoCurrentType(t *testing.T) {
	old, err := load(history, "history/"+NameOrderCreated)
	if err != nil || len(old) == 0 {
		t.Fatal(err)
	}
	data, err := avro.Marshal(old[0].Schema, map[string]any{
		"order_id": "o1", "user_id": "u1",
		"items":       []any{map[string]any{"sku": "SKU-1", "quantity": 2}},
		"occurred_at": time.UnixMilli(1700000000000),
	})
	if err != nil {
		t.Fatal(err)
	}
	// What outbox.Decoder does with the writer schema it gets from the
	// registry. The reader must be the full definition: the generated
	// Schema() is the canonical form, which drops the defaults that make the
	// evolution compatible.
	cur, _ := Definition(NameOrderCreated)
	reader, err := parse(cur)
	if err != nil {
		t.Fatal(err)
	}
	var got OrderCreated
	resolved, err := avro.NewSchemaCompatibility().Resolve(reader, old[0].Schema)
	if err != nil {
		t.Fatal(err)
	}
	if err := avro.Unmarshal(resolved, data, &got); err != nil {
		t.Fatal(err)
	}
	if got.OrderID != "o1" || len(got.Items) != 1 || got.Items[0].Quantity != 2 || got.TotalCents != 0 {
		t.Fatalf("decoded %+v", got)
	}
}

// Every schema is accepted by the outbox codec, and the generated types name
// schemas the codec knows, so Message.Type can be left empty.
func TestAllFeedsTheOutboxCodec(t *testing.T) {
	c, err := outbox.NewCodec(All()...)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []interface {
		Marshal() ([]byte, error)
	}{&OrderCreated{}, &OrderApproved{}, &OrderCancelled{}, &ReserveStock{}, &ReleaseStock{},
		&StockReserved{}, &DebitCredit{}, &RefundCredit{}, &CreditDebited{}} {
		if _, _, err := c.Encode("", v); err != nil {
			t.Errorf("%T: %v", v, err)
		}
	}
	if len(All()) != 9 {
		t.Errorf("All() has %d schemas, want 9", len(All()))
	}
}

// The saga package's definitions are the files in saga/, whose history is
// checked above: a change to one of saga.Schemas() must go through them.
func TestSagaSchemasAreTheFiles(t *testing.T) {
	defs, err := load(sagaFiles, "saga")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, d := range defs {
		files[d.FullName] = d.Definition
	}
	got := saga.Schemas()
	if len(got) != len(files) {
		t.Errorf("saga.Schemas() has %d schemas, saga/ has %d files", len(got), len(files))
	}
	for _, g := range got {
		s, err := parse(g)
		if err != nil {
			t.Fatal(err)
		}
		name := s.(avro.NamedSchema).FullName()
		if want, ok := files[name]; !ok {
			t.Errorf("%s has no file in saga/", name)
		} else if strings.TrimSpace(g) != want {
			t.Errorf("saga.Schemas() defines %s differently from its file in saga/:\n%s\nfile:\n%s", name, g, want)
		}
	}
	// Empty is zero bytes, so a command without a payload is an empty value.
	c, err := outbox.NewCodec(got...)
	if err != nil {
		t.Fatal(err)
	}
	_, b, err := c.Encode(saga.EmptyType, map[string]any{})
	if err != nil || len(b) != 0 {
		t.Fatalf("Empty encodes to %v, %v; want zero bytes", b, err)
	}
}
