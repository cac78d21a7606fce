package participanttest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/saga/participanttest"
)

const reserveSchema = `{"type": "record", "name": "Reserve", "namespace": "kit",
 "fields": [{"name": "item", "type": "string"}, {"name": "qty", "type": "int"}]}`

const reservedSchema = `{"type": "record", "name": "Reserved", "namespace": "kit",
 "fields": [{"name": "left", "type": "int"}]}`

type reserve struct {
	Item string `avro:"item"`
	Qty  int    `avro:"qty"`
}

type reserved struct {
	Left int `avro:"left"`
}

// shop is a database with a stock table, and a codec for its commands.
func shop(t *testing.T) (*pgxpool.Pool, *outbox.Codec) {
	t.Helper()
	db := testkit.NewDatabase(t)
	ctx := t.Context()
	testkit.Must(t, outbox.Migrate(ctx, db.Pool), "outbox migrate")
	testkit.Must(t, saga.Migrate(ctx, db.Pool), "saga migrate")
	_, err := db.Pool.Exec(ctx, `CREATE TABLE stock (item text PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0));
		INSERT INTO stock VALUES ('book', 10)`)
	testkit.Must(t, err, "stock")
	return db.Pool, outbox.MustCodec(append(saga.Schemas(), reserveSchema, reservedSchema)...)
}

// db is what the handlers write through: their transaction, or the pool.
type db interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// stockHandlers take and give back stock. A broken one writes through
// the pool instead of its transaction: its change commits whatever the
// participant decides, the classic way to lose idempotency.
func stockHandlers(pool *pgxpool.Pool, broken bool) []saga.Handler {
	through := func(tx pgx.Tx) db {
		if broken {
			return pool
		}
		return tx
	}
	return []saga.Handler{
		saga.HandleCommand("reserve", func(ctx context.Context, tx pgx.Tx, _ *saga.Command, r reserve) (any, error) {
			var left int
			err := through(tx).QueryRow(ctx, `UPDATE stock SET qty = qty - $2 WHERE item = $1 AND qty >= $2 RETURNING qty`,
				r.Item, r.Qty).Scan(&left)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil, saga.Reject("out of stock")
			}
			if err != nil {
				return nil, err
			}
			return saga.Payload{Type: "kit.Reserved", Value: reserved{Left: left}}, nil
		}),
		saga.HandleCommand("release", func(ctx context.Context, tx pgx.Tx, _ *saga.Command, r reserve) (any, error) {
			_, err := through(tx).Exec(ctx, `UPDATE stock SET qty = qty + $2 WHERE item = $1`, r.Item, r.Qty)
			return nil, err
		}),
	}
}

func subject(t *testing.T, broken bool) participanttest.Subject[int] {
	pool, codec := shop(t)
	h := participanttest.New(t, pool, codec, saga.ParticipantConfig{Name: "shop", Handlers: stockHandlers(pool, broken)})
	payload := saga.Payload{Type: "kit.Reserve", Value: reserve{Item: "book", Qty: 3}}
	action := h.Command("reserve", payload)
	return participanttest.Subject[int]{Harness: h, Action: action, Compensation: h.Compensation(action, "release", payload),
		State: func(ctx context.Context) (int, error) {
			var qty int
			err := pool.QueryRow(ctx, `SELECT qty FROM stock WHERE item = 'book'`).Scan(&qty)
			return qty, err
		}}
}

func TestIdempotencySuite(t *testing.T) {
	t.Parallel()
	participanttest.RunIdempotencySuite(t, func(t *testing.T) participanttest.Subject[int] { return subject(t, false) })
}

// The suite can fail: against handlers that write outside their
// transaction, the racing deliveries apply the action twice. The suite runs
// in a child process (a failing subtest would fail this test), which must
// fail for that reason alone.
func TestIdempotencySuiteCatchesAHandlerWritingOutsideItsTransaction(t *testing.T) {
	if os.Getenv("PARTICIPANTTEST_BROKEN") == "1" {
		participanttest.RunIdempotencySuite(t, func(t *testing.T) participanttest.Subject[int] { return subject(t, true) })
		return
	}
	t.Parallel()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "PARTICIPANTTEST_BROKEN=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the suite passed on a participant that applies a racing command twice:\n%s", out)
	}
	for _, want := range []string{"--- PASS: " + t.Name() + "/Redelivery", "--- PASS: " + t.Name() + "/CompensationBeforeAction",
		"--- PASS: " + t.Name() + "/LateActionAfterCompensation", "--- FAIL: " + t.Name() + "/ConcurrentDeliveries",
		"two deliveries racing left state 4, one delivery leaves 7"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the child's output lacks %q:\n%s", want, out)
		}
	}
}

// Deliver runs a command and returns the reply the participant wrote.
func TestDeliverReturnsTheReply(t *testing.T) {
	t.Parallel()
	pool, codec := shop(t)
	h := participanttest.New(t, pool, codec, saga.ParticipantConfig{Name: "shop", Handlers: stockHandlers(pool, false)})
	r := h.Deliver(h.Command("reserve", saga.Payload{Type: "kit.Reserve", Value: reserve{Item: "book", Qty: 4}}))
	var v reserved
	testkit.Must(t, r.Decode(&v), "decode")
	if r.Outcome != saga.OutcomeSucceeded || v.Left != 6 {
		t.Fatalf("reply %v, left %d", r, v.Left)
	}
	r = h.Deliver(h.Command("reserve", saga.Payload{Type: "kit.Reserve", Value: reserve{Item: "book", Qty: 40}}))
	if r.Outcome != saga.OutcomeRejected || r.Reason != "out of stock" || r.PayloadType != "" {
		t.Fatalf("reply %v", r)
	}
	cut := h.Command("reserve", saga.Payload{Type: "kit.Reserve", Value: reserve{Item: "book", Qty: 1}})
	cut.Payload = cut.Payload[:2]
	r = h.Deliver(cut)
	if r.Outcome != saga.OutcomeRejected || !strings.Contains(r.Reason, "reserve: the payload does not decode") {
		t.Fatalf("a payload that does not decode: reply %v", r)
	}
}
