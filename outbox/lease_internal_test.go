package outbox

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/internal/testkit"
)

// The fence in SQL: once a shard changed hands (its epoch grew), the
// statements of the relay that held it before, carrying the old epoch,
// read and mark none of its rows, while they go on working for the shards
// it still holds. This is what stops a relay that was paused past its lease
// from deleting or backing off rows the new owner is publishing.
func TestFencedStatementsTouchNoRowOfAShardThatChangedHands(t *testing.T) {
	t.Parallel()
	db := testkit.NewDatabase(t)
	ctx := testkit.Ctx(t)
	testkit.Must(t, Migrate(ctx, db.Pool), "migrate")
	w, err := NewWriter(WriterConfig{Codec: MustCodec(`{"type":"record","name":"E","namespace":"t","fields":[{"name":"n","type":"long"}]}`)})
	testkit.Must(t, err, "writer")
	testkit.Must(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		for i := range 200 {
			if err := w.Write(ctx, tx, Message{Topic: "t", Key: fmt.Sprintf("k%d", i), Type: "t.E", Value: map[string]any{"n": int64(i)}}); err != nil {
				return err
			}
		}
		return nil
	}), "write")

	a := &leases{pool: db.Pool, id: "a", ttl: time.Minute}
	testkit.Must(t, a.tick(ctx), "tick")
	if len(a.owned) != NumShards {
		t.Fatalf("a owns %d shards, want all %d", len(a.owned), NumShards)
	}
	// Shard `lost` changes hands behind a's back: b takes it (its lease
	// expired while a was paused) and the epoch grows.
	var lost int16
	testkit.Must(t, db.Pool.QueryRow(ctx, `SELECT shard FROM sagabox.outbox GROUP BY shard ORDER BY count(*) DESC LIMIT 1`).Scan(&lost), "busiest shard")
	_, err = db.Pool.Exec(ctx, `UPDATE sagabox.outbox_leases SET owner = 'b', epoch = epoch + 1 WHERE shard = $1`, lost)
	testkit.Must(t, err, "b takes the shard")

	ids := func(shardIs bool) []int64 {
		rows, err := db.Pool.Query(ctx, `SELECT id FROM sagabox.outbox WHERE (shard = $1) = $2 ORDER BY id`, lost, shardIs)
		testkit.Must(t, err, "ids")
		out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		testkit.Must(t, err, "ids")
		return out
	}
	lostIDs, keptIDs := ids(true), ids(false)
	if len(lostIDs) == 0 || len(keptIDs) == 0 {
		t.Fatalf("rows in the lost shard: %d, in the others: %d; want both", len(lostIDs), len(keptIDs))
	}

	// Fetch: a sees the rows of the shards it still holds, none of the lost one.
	rows, err := db.Pool.Query(ctx, fetchSQL, a.owned, 1000, a.epochs, a.id)
	testkit.Must(t, err, "fetch")
	fetched := 0
	for rows.Next() {
		fetched++
	}
	testkit.Must(t, rows.Err(), "fetch")
	if fetched != len(keptIDs) {
		t.Fatalf("a fetched %d rows, want the %d of the shards it still holds", fetched, len(keptIDs))
	}

	exec := func(sql string, args ...any) int64 {
		tag, err := db.Pool.Exec(ctx, sql, args...)
		testkit.Must(t, err, "exec")
		return tag.RowsAffected()
	}
	n := len(lostIDs)
	if got := exec(markFailedSQL, lostIDs, a.owned, a.epochs, a.id,
		make([]int32, n), make([]int64, n), make([]string, n), make([]bool, n)); got != 0 {
		t.Fatalf("a backed off %d rows of the shard it lost", got)
	}
	if got := exec(deletePublishedSQL, lostIDs, a.owned, a.epochs, a.id); got != 0 {
		t.Fatalf("a deleted %d rows of the shard it lost", got)
	}
	if got := exec(archivePublishedSQL, lostIDs, a.owned, a.epochs, a.id); got != 0 {
		t.Fatalf("a archived %d rows of the shard it lost", got)
	}
	// b, at the new epoch, may.
	b := &leases{pool: db.Pool, id: "b", ttl: time.Minute}
	var epoch int64
	testkit.Must(t, db.Pool.QueryRow(ctx, `SELECT epoch FROM sagabox.outbox_leases WHERE shard = $1`, lost).Scan(&epoch), "epoch")
	b.owned, b.epochs = []int16{lost}, []int64{epoch}
	if got := exec(deletePublishedSQL, lostIDs, b.owned, b.epochs, b.id); got != int64(n) {
		t.Fatalf("b deleted %d rows of its shard, want %d", got, n)
	}
	// And a still marks its own.
	if got := exec(deletePublishedSQL, keptIDs, a.owned, a.epochs, a.id); got != int64(len(keptIDs)) {
		t.Fatalf("a deleted %d rows of the shards it holds, want %d", got, len(keptIDs))
	}
}
