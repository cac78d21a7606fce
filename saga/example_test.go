package saga_test

import (
	"context"
	"fmt"
	"time"

	"github.com/sagabox/sagabox/saga"
)

type booking struct {
	Flight, Hotel string
}

// A trip saga: book a flight, book a hotel, charge the card (the pivot).
// The hotel is full, so the flight booking is cancelled. The Simulation runs
// the same state machine as the Orchestrator, without Postgres or Kafka
// (package sagatest wraps it for tests).
func ExampleNewDefinition() {
	inv := func(cmd string) *saga.Invocation[booking] {
		return &saga.Invocation[booking]{Topic: "travel.commands", Command: cmd}
	}
	def, err := saga.NewDefinition("book_trip", 1,
		saga.Step[booking]{Name: "flight", Invoke: inv("book_flight"), Compensate: inv("cancel_flight"), Timeout: 10 * time.Second},
		saga.Step[booking]{Name: "hotel", Invoke: inv("book_hotel"), Compensate: inv("cancel_hotel"), Timeout: 10 * time.Second},
		saga.Step[booking]{Name: "charge", Kind: saga.Pivot, Invoke: inv("charge_card")},
	)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	sim := saga.NewSimulation(def, nil, booking{})
	_ = sim.Start(ctx)
	reply := func(o saga.Outcome, reason string) {
		last := sim.Sent()[len(sim.Sent())-1]
		fmt.Printf("sent %s (step %d, attempt %d) -> %s\n", last.Command, last.Step, last.Attempt, o)
		_, _ = sim.Reply(ctx, saga.Reply{Step: last.Step, Attempt: last.Attempt, Compensation: last.Compensation, Outcome: o, Reason: reason})
	}
	reply(saga.OutcomeSucceeded, "")
	reply(saga.OutcomeRejected, "hotel full")
	reply(saga.OutcomeSucceeded, "")
	fmt.Println("status:", sim.Status())
	// Output:
	// sent book_flight (step 0, attempt 1) -> succeeded
	// sent book_hotel (step 1, attempt 1) -> rejected
	// sent cancel_flight (step 0, attempt 1) -> succeeded
	// status: compensated
}

func ExampleDefinition_Mermaid() {
	inv := func(cmd string) *saga.Invocation[booking] {
		return &saga.Invocation[booking]{Topic: "travel", Command: cmd}
	}
	def := saga.MustDefinition("book_trip", 1,
		saga.Step[booking]{Name: "flight", Invoke: inv("book_flight"), Compensate: inv("cancel_flight")},
		saga.Step[booking]{Name: "charge", Kind: saga.Pivot, Invoke: inv("charge_card")},
	)
	fmt.Print(def.Mermaid())
	// Output:
	// flowchart TD
	//     start([book_trip v1]) --> s0
	//     s0["flight<br/>book_flight → travel<br/><i>compensatable</i>"] -->|ok| s1
	//     s0 -.->|rejected| compensated([compensated])
	//     s0 -.->|times out or errors| c0
	//     s1{{"charge<br/>charge_card → travel<br/><i>pivot</i>"}} -->|ok| succeeded([succeeded])
	//     s1 -.->|rejected| c0
	//     s1 -.->|times out: asks again| s1
	//     s1 -.->|errors past its attempts| failed([failed])
	//     c0[/"undo flight<br/>cancel_flight → travel"/] -->|ok| compensated([compensated])
	//     c0 -.->|attempts exhausted| failed([failed])
}
