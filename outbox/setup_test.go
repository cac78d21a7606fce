package outbox_test

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
)

const orderPlacedSchema = `{
  "type": "record", "name": "OrderPlaced", "namespace": "test.orders",
  "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "seq", "type": "long"},
    {"name": "note", "type": "string", "default": ""}
  ]
}`

type orderPlaced struct {
	OrderID string `avro:"order_id"`
	Seq     int64  `avro:"seq"`
	Note    string `avro:"note"`
}

const orderPlacedType = "test.orders.OrderPlaced"

type bundle struct {
	db     *testkit.Database
	pool   *pgxpool.Pool
	codec  *outbox.Codec
	writer *outbox.Writer
}

func setup(t *testing.T) *bundle {
	t.Helper()
	db := testkit.NewDatabase(t)
	ctx := testkit.Ctx(t)
	testkit.Must(t, outbox.Migrate(ctx, db.Pool), "migrate")
	codec := outbox.MustCodec(orderPlacedSchema)
	w, err := outbox.NewWriter(outbox.WriterConfig{Codec: codec})
	testkit.Must(t, err, "writer")
	testkit.Must(t, w.StoreSchemas(ctx, db.Pool), "store schemas")
	return &bundle{db: db, pool: db.Pool, codec: codec, writer: w}
}
