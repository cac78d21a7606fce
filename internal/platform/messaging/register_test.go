package messaging

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/riferrei/srclient"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/schemas"
)

func TestRegisterSchemasAtStartUp(t *testing.T) {
	t.Parallel()
	reg := testkit.Registry(t)
	client := srclient.NewSchemaRegistryClient(reg.URL())
	codec, err := outbox.NewCodec(append(saga.Schemas(), schemas.All()...)...)
	testkit.Must(t, err, "codec")
	m := &Messaging{Codec: codec, Registry: client}

	names := []string{schemas.NameOrderCreated, schemas.NameOrderApproved, schemas.NameOrderCancelled}
	testkit.Must(t, m.RegisterSchemas(schemas.TopicOrderEvents, names...), "register")
	testkit.Must(t, m.RegisterSchemas(schemas.TopicOrderEvents, names...), "register again (another instance)")
	for _, n := range names {
		got, err := client.GetLatestSchema(outbox.Subject(schemas.TopicOrderEvents, n))
		testkit.Must(t, err, "latest %s", n)
		want, _ := schemas.Definition(n)
		var a, b any
		_ = json.Unmarshal([]byte(got.Schema()), &a)
		_ = json.Unmarshal([]byte(want), &b)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: registered %s", n, got.Schema())
		}
	}

	// A subject whose latest version the current schema cannot read: start-up
	// must fail, naming it.
	cancelled, _ := schemas.Definition(schemas.NameOrderCancelled)
	incompatible := strings.Replace(cancelled, `{"name": "reason", "type": "string"`, `{"name": "reason", "type": "int"`, 1)
	_, err = client.CreateSchema(outbox.Subject("legacy.events", schemas.NameOrderCancelled), incompatible, srclient.Avro)
	testkit.Must(t, err, "seed incompatible")
	if err := m.RegisterSchemas("legacy.events", schemas.NameOrderCancelled); err == nil || !strings.Contains(err.Error(), "BACKWARD") {
		t.Fatalf("incompatible schema registered: %v", err)
	}
	if err := (&Messaging{Codec: codec}).RegisterSchemas("x", schemas.NameOrderCreated); err != nil {
		t.Fatalf("without Kafka: %v", err)
	}
}
