package saga_test

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/saga"
)

// An operator tool (a console, a CLI) lists the failed sagas of a database
// page by page and asks for one to be retried, without the definition's Go
// type. An orchestrator of the saga's type carries the retry out at its next
// timer poll and records it in the saga's Actions.
func ExampleAdmin() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/shop")
	if err != nil {
		panic(err)
	}
	admin := saga.NewAdmin(pool)
	counts, err := admin.Counts(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("failed:", counts[saga.StatusFailed])
	opt := saga.ListOptions{Failed: true, Limit: 50}
	for {
		page, err := admin.List(ctx, opt)
		if err != nil {
			panic(err)
		}
		for _, s := range page.Sagas {
			fmt.Println(s.ID, s.Type, s.LastError)
		}
		if page.Next == "" {
			break
		}
		opt.After = page.Next
	}
	id := uuid.MustParse("01938f6e-0000-7000-8000-000000000000")
	if err := admin.Retry(ctx, id, saga.ActionOptions{Actor: "alice", Reason: "warehouse is back"}); err != nil {
		fmt.Println(err) // saga.ErrNotFound, saga.ErrWrongState: nothing changed
	}
}
