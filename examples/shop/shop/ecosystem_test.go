package shop_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagabox/sagabox/examples/shop/shop"
	"github.com/sagabox/sagabox/internal/testkit"
)

// A consumer that knows nothing of sagabox (a plain franz-go client, the
// registry's REST API, hamba/avro with no types) decodes every record on
// every topic, saga commands and replies included, into named fields with
// the schema the registry gives for the record's ID: no record is an opaque
// envelope with Avro bytes inside. The demo's scenario runs one approved
// and two cancelled orders, so every command, reply and compensation of the
// shop is on the topics.
func TestEveryRecordDecodesToNamedFieldsWithTheRegistrysSchema(t *testing.T) {
	t.Parallel()
	s, c, ctx := setup(t)
	r, err := c.PlayScenario(ctx, &strings.Builder{})
	if err != nil {
		t.Fatalf("scenario: %v", err)
	}
	// Every order's last event is on order.events once the catalog saw it.
	for _, o := range []shop.Order{r.Approved, r.NoCredit, r.NoStock} {
		testkit.Eventually(t, testViewCatchUp, "the catalog's view of "+o.OrderID, func() bool {
			v, err := c.CatalogOrder(ctx, r.Customer.Token, o.OrderID)
			return err == nil && v.Status == o.Status
		})
	}

	records := readEveryTopic(ctx, t, s.Brokers)
	schemaOf := registrySchemas(t, s.RegistryURL)
	byType := map[string][]map[string]any{}
	for _, rec := range records {
		where := fmt.Sprintf("%s/%d@%d", rec.Topic, rec.Partition, rec.Offset)
		if len(rec.Value) < 5 || rec.Value[0] != 0 {
			t.Errorf("%s: no Confluent header (magic byte 0, 4-byte schema ID): % x", where, rec.Value[:min(5, len(rec.Value))])
			continue
		}
		id := int(binary.BigEndian.Uint32(rec.Value[1:5]))
		schema := schemaOf(id)
		named, ok := schema.(*avro.RecordSchema)
		if !ok {
			t.Errorf("%s: schema %d is a %s, not a record", where, id, schema.Type())
			continue
		}
		var v map[string]any
		if err := avro.Unmarshal(schema, rec.Value[5:], &v); err != nil {
			t.Errorf("%s: does not decode with schema %d (%s): %v", where, id, named.FullName(), err)
			continue
		}
		if b := opaque(v, ""); b != "" {
			t.Errorf("%s: %s carries Avro bytes in %s: a generic consumer sees a blob", where, named.FullName(), b)
		}
		for _, f := range named.Fields() {
			if _, ok := v[f.Name()]; !ok {
				t.Errorf("%s: %s decoded without its field %s", where, named.FullName(), f.Name())
			}
		}
		byType[named.FullName()] = append(byType[named.FullName()], v)
		rec.Headers["topic"] = rec.Topic
		v["@headers"] = rec.Headers
	}

	var kinds []string
	for k, vs := range byType {
		kinds = append(kinds, fmt.Sprintf("%s×%d", k, len(vs)))
	}
	sort.Strings(kinds)
	t.Logf("%d records: %s", len(records), strings.Join(kinds, " "))

	// The saga's messages, each its own record with named fields. The
	// approved order and the one cancelled for credit reserved stock; the
	// latter's reservation was released; two debits were asked, one made.
	want := map[string]int{
		"sagabox.shop.OrderCreated": 3, "sagabox.shop.ReserveStock": 3, "sagabox.shop.StockReserved": 2,
		"sagabox.shop.DebitCredit": 2, "sagabox.shop.CreditDebited": 1, "sagabox.shop.ReleaseStock": 1,
		"sagabox.shop.OrderApproved": 1, "sagabox.shop.OrderCancelled": 2,
	}
	for typ, n := range want {
		if got := len(byType[typ]); got != n {
			t.Errorf("%d %s records, want %d", got, typ, n)
		}
	}
	for _, env := range []string{"sagabox.saga.Command", "sagabox.saga.Reply", "sagabox.saga.DeadLetter"} {
		if n := len(byType[env]); n > 0 {
			t.Errorf("%d %s records", n, env)
		}
	}
	for _, v := range byType["sagabox.shop.ReserveStock"] {
		items, _ := v["items"].([]any)
		line, _ := firstOf(items)
		if v["order_id"] == "" || len(items) == 0 || line["sku"] == "" || line["quantity"] == nil {
			t.Errorf("ReserveStock without its order and items: %v", v)
		}
		h := v["@headers"].(map[string]string)
		if h["topic"] != "catalog.commands" || h["sagabox_command"] != "reserve_stock" || h["sagabox_compensation"] != "false" ||
			h["sagabox_step_name"] != "reserve_stock" || h["sagabox_attempt"] != "1" || h["saga_id"] == "" || h["sagabox_reply_topic"] == "" {
			t.Errorf("ReserveStock's saga headers: %v", h)
		}
	}
	for _, v := range byType["sagabox.shop.StockReserved"] {
		items, _ := v["items"].([]any)
		line, _ := firstOf(items)
		if v["order_id"] == "" || v["total_cents"].(int64) <= 0 || line["unit_price_cents"] == nil {
			t.Errorf("StockReserved without its fields: %v", v)
		}
		if h := v["@headers"].(map[string]string); h["sagabox_outcome"] != "SUCCESS" || h["sagabox_step"] == "" {
			t.Errorf("StockReserved's saga headers: %v", h)
		}
	}
	for _, v := range byType["sagabox.shop.CreditDebited"] {
		if v["order_id"] != r.Approved.OrderID || v["amount_cents"] != r.Approved.TotalCents {
			t.Errorf("CreditDebited %v, want order %s amount %d", v, r.Approved.OrderID, r.Approved.TotalCents)
		}
	}
	for _, v := range byType["sagabox.shop.DebitCredit"] {
		if v["order_id"] == "" || v["amount_cents"].(int64) <= 0 {
			t.Errorf("DebitCredit without its fields: %v", v)
		}
	}
	// Replies without a payload (the refused reserve and debit, the
	// release's success) are Empty records with the outcome in headers.
	outcomes := map[string]int{}
	for _, v := range byType["sagabox.saga.Empty"] {
		h := v["@headers"].(map[string]string)
		outcomes[h["topic"]+" "+h["sagabox_outcome"]+" "+h["sagabox_reason"]]++
	}
	for _, o := range []string{"order.saga.replies REJECTED insufficient stock", "order.saga.replies REJECTED insufficient credit",
		"order.saga.replies SUCCESS "} {
		found := false
		for got := range outcomes {
			found = found || strings.HasPrefix(got, o)
		}
		if !found {
			t.Errorf("no Empty reply %q... among %v", o, outcomes)
		}
	}
}

// readEveryTopic reads every record of every topic from the start, up to
// the end offsets listed when it starts.
func readEveryTopic(ctx context.Context, t *testing.T, brokers []string) []testkit.Record {
	t.Helper()
	admin, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	testkit.Must(t, err, "client")
	defer admin.Close()
	meta, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, admin)
	testkit.Must(t, err, "metadata")
	list := kmsg.NewPtrListOffsetsRequest()
	var topics []string
	for _, tp := range meta.Topics {
		if tp.Topic == nil || strings.HasPrefix(*tp.Topic, "__") {
			continue
		}
		topics = append(topics, *tp.Topic)
		lt := kmsg.NewListOffsetsRequestTopic()
		lt.Topic = *tp.Topic
		for _, p := range tp.Partitions {
			lp := kmsg.NewListOffsetsRequestTopicPartition()
			lp.Partition, lp.Timestamp = p.Partition, -1 // the end
			lt.Partitions = append(lt.Partitions, lp)
		}
		list.Topics = append(list.Topics, lt)
	}
	ends, err := list.RequestWith(ctx, admin)
	testkit.Must(t, err, "list offsets")
	left := map[string]int64{} // records still to read, per topic/partition
	total := int64(0)
	for _, tp := range ends.Topics {
		for _, p := range tp.Partitions {
			if p.ErrorCode != 0 {
				t.Fatalf("list offsets of %s/%d: error %d", tp.Topic, p.Partition, p.ErrorCode)
			}
			if p.Offset > 0 {
				left[fmt.Sprintf("%s/%d", tp.Topic, p.Partition)] = p.Offset
				total += p.Offset
			}
		}
	}
	sort.Strings(topics)
	for _, want := range []string{"catalog.commands", "order.events", "order.saga.replies", "user.commands"} {
		if !slices.Contains(topics, want) {
			t.Fatalf("topics %v lack %s", topics, want)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	testkit.Must(t, err, "consumer")
	defer cl.Close()
	var out []testkit.Record
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records; still to read (partition: end offset) %v", len(out), total, left)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			h := map[string]string{}
			for _, kv := range r.Headers {
				h[kv.Key] = string(kv.Value)
			}
			out = append(out, testkit.Record{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Key: string(r.Key), Value: r.Value, Headers: h})
			k := fmt.Sprintf("%s/%d", r.Topic, r.Partition)
			if end, ok := left[k]; ok && r.Offset+1 >= end {
				delete(left, k)
			}
		})
	}
	return out
}

// registrySchemas returns a lookup of schemas by ID through the registry's
// REST API (GET /schemas/ids/{id}), as any Confluent client does it.
func registrySchemas(t *testing.T, url string) func(id int) avro.Schema {
	cache := map[int]avro.Schema{}
	return func(id int) avro.Schema {
		t.Helper()
		if s, ok := cache[id]; ok {
			return s
		}
		res, err := http.Get(fmt.Sprintf("%s/schemas/ids/%d", url, id))
		testkit.Must(t, err, "get schema %d", id)
		defer res.Body.Close()
		var body struct {
			Schema string `json:"schema"`
		}
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET /schemas/ids/%d: %s", id, res.Status)
		}
		testkit.Must(t, json.NewDecoder(res.Body).Decode(&body), "schema %d", id)
		s, err := avro.ParseWithCache(body.Schema, "", &avro.SchemaCache{}) // its own cache: versions of one name may differ
		testkit.Must(t, err, "parse schema %d", id)
		cache[id] = s
		return s
	}
}

// opaque names the first field of v holding Avro bytes ("" for none).
func opaque(v any, path string) string {
	switch x := v.(type) {
	case []byte:
		return path
	case map[string]any:
		for k, e := range x {
			if p := opaque(e, path+"."+k); p != "" {
				return p
			}
		}
	case []any:
		for i, e := range x {
			if p := opaque(e, fmt.Sprintf("%s[%d]", path, i)); p != "" {
				return p
			}
		}
	}
	return ""
}

func firstOf(items []any) (map[string]any, bool) {
	if len(items) == 0 {
		return map[string]any{}, false
	}
	m, ok := items[0].(map[string]any)
	return m, ok
}
