package saga_test

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/saga"
)

// An orchestrated order saga over Kafka: reserve stock, then debit the
// buyer (the pivot). The debit is rejected, so the reservation is released
// and the saga ends compensated. Orchestrator and participants attach to
// one client here; in the shop each service has its own client and
// database.
func ExampleNewOrchestrator() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, drop, err := testkit.CreateDatabase(ctx, "example_orchestrator")
	if err != nil {
		panic(err)
	}
	defer drop() //nolint:errcheck
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		panic(err)
	}
	defer kafka.Close()
	registry := srfake.New()
	defer registry.Close()
	client, err := sagabox.NewClient(db.Pool, sagabox.Config{
		Brokers: kafka.ListenAddrs(), RegistryURL: registry.URL(),
		Schemas: []string{reserveStockSchema, stockReservedSchema, debitCreditSchema},
	})
	if err != nil {
		panic(err)
	}
	if err := client.Migrate(ctx); err != nil {
		panic(err)
	}

	// The definition: what to ask, what undoes it, what to keep from the
	// replies. Its type and version are stored with every saga.
	def := saga.MustDefinition("order", 1,
		saga.Step[order]{
			Name: "reserve_stock",
			Invoke: &saga.Invocation[order]{Topic: "catalog.commands", Command: "reserve_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil },
				OnReply: func(o *order, r *saga.Reply) error {
					var res stockReserved
					err := r.Decode(&res)
					o.ReservationID = res.ReservationID
					return err
				}},
			Compensate: &saga.Invocation[order]{Topic: "catalog.commands", Command: "release_stock", Type: "test.catalog.ReserveStock",
				Payload: func(o *order) (any, error) { return reserveStock{Item: o.Item, Qty: o.Qty}, nil }},
			Timeout: 30 * time.Second,
		},
		saga.Step[order]{
			Name: "debit_credit", Kind: saga.Pivot,
			Invoke: &saga.Invocation[order]{Topic: "users.commands", Command: "debit_credit", Type: "test.users.DebitCredit",
				Payload: func(o *order) (any, error) { return debitCredit{User: o.User, Amount: o.Amount}, nil }},
			Timeout: 30 * time.Second,
		},
	)
	orch, err := saga.NewOrchestrator(client, saga.Config{ReplyTopic: "orders.replies"}, def)
	if err != nil {
		panic(err)
	}

	// Two participants: each handler's change, its reply and its inbox
	// entry commit in one transaction.
	mustParticipant := func(name, topic string, hs ...saga.Handler) {
		if _, err := saga.NewParticipant(client, saga.ParticipantConfig{Name: name, CommandTopic: topic, Handlers: hs}); err != nil {
			panic(err)
		}
	}
	mustParticipant("catalog", "catalog.commands",
		saga.HandleCommand("reserve_stock", func(_ context.Context, _ pgx.Tx, _ *saga.Command, r reserveStock) (any, error) {
			return saga.Payload{Type: "test.catalog.StockReserved", Value: stockReserved{ReservationID: "r-" + r.Item}}, nil
		}),
		saga.HandleCommand("release_stock", func(_ context.Context, _ pgx.Tx, _ *saga.Command, r reserveStock) (any, error) {
			return nil, nil
		}))
	mustParticipant("users", "users.commands",
		saga.HandleCommand("debit_credit", func(_ context.Context, _ pgx.Tx, _ *saga.Command, d debitCredit) (any, error) {
			return nil, saga.Reject(fmt.Sprintf("%s has not %d cents", d.User, d.Amount))
		}))

	// A Waiter wakes a caller when its saga finishes (a NOTIFY from the
	// finishing transaction), without polling.
	waiter, err := saga.NewWaiter(client)
	if err != nil {
		panic(err)
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- client.Run(runCtx) }()
	<-client.Ready()

	// Start commits the saga with the caller's transaction: with the order
	// row in a real service.
	var id uuid.UUID
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		id, err = orch.Start(ctx, tx, order{OrderID: "o-1", Item: "book", Qty: 1, User: "ada", Amount: 5000})
		return err
	})
	if err != nil {
		panic(err)
	}

	// Wait for the end.
	info, err := waiter.Wait(ctx, id)
	if err != nil {
		panic(err)
	}
	for _, a := range info.History {
		line := fmt.Sprintf("%-13s compensation=%-5v %s", a.Name, a.Compensation, a.Outcome)
		if a.Error != "" {
			line += ": " + a.Error
		}
		fmt.Println(line)
	}
	fmt.Println("status:", info.Status)
	stop()
	fmt.Println("run:", <-done)
	// Output:
	// reserve_stock compensation=false succeeded
	// debit_credit  compensation=false rejected: ada has not 5000 cents
	// reserve_stock compensation=true  succeeded
	// status: compensated
	// run: <nil>
}
