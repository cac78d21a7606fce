package outbox_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/riferrei/srclient"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

const orderCancelledSchema = `{
  "type": "record", "name": "OrderCancelled", "namespace": "test.orders",
  "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "reason", "type": "string", "default": ""}
  ]
}`

// Registering at start-up: every named schema lands under its subject,
// registering again (another instance) is harmless, and a schema the
// subject's consumers could not use stops start-up, naming it.
func TestRegisterSchemasAtStartUp(t *testing.T) {
	t.Parallel()
	reg := testkit.Registry(t)
	client := srclient.NewSchemaRegistryClient(reg.URL())
	codec := outbox.MustCodec(orderPlacedSchema, orderCancelledSchema)
	const cancelledType = "test.orders.OrderCancelled"

	names := []string{orderPlacedType, cancelledType}
	testkit.Must(t, outbox.RegisterSchemas(client, codec, "orders", names...), "register")
	testkit.Must(t, outbox.RegisterSchemas(client, codec, "orders", names...), "register again (another instance)")
	for _, n := range names {
		got, err := client.GetLatestSchema(outbox.Subject("orders", n))
		testkit.Must(t, err, "latest %s", n)
		want, _ := codec.Schema(n)
		var a, b any
		_ = json.Unmarshal([]byte(got.Schema()), &a)
		_ = json.Unmarshal([]byte(want.Definition), &b)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: registered %s", n, got.Schema())
		}
		if got.Version() != 1 {
			t.Errorf("%s: version %d after registering twice, want 1", n, got.Version())
		}
	}

	// A subject whose latest version the current schema cannot read.
	incompatible := strings.Replace(orderCancelledSchema, `{"name": "reason", "type": "string"`, `{"name": "reason", "type": "int"`, 1)
	_, err := client.CreateSchema(outbox.Subject("legacy.events", cancelledType), incompatible, srclient.Avro)
	testkit.Must(t, err, "seed incompatible")
	err = outbox.RegisterSchemas(client, codec, "legacy.events", cancelledType)
	if !errors.Is(err, outbox.ErrIncompatibleSchema) || !strings.Contains(err.Error(), cancelledType) {
		t.Fatalf("incompatible schema: want ErrIncompatibleSchema naming it, got %v", err)
	}
	if err := outbox.RegisterSchemas(client, codec, "orders", "test.Unknown"); !errors.Is(err, outbox.ErrUnknownSchema) {
		t.Fatalf("unknown name: want ErrUnknownSchema, got %v", err)
	}
}
