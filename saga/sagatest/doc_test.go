package sagatest_test

import (
	"testing"
	"time"

	"github.com/sagabox/sagabox/saga"
	"github.com/sagabox/sagabox/saga/sagatest"
)

type OrderData struct{ OrderID string }

// The package doc's example, line for line, so that it compiles and holds.
func TestPackageDocExample(t *testing.T) {
	inv := func(cmd string) *saga.Invocation[OrderData] {
		return &saga.Invocation[OrderData]{Topic: "shop.commands", Command: cmd}
	}
	def := saga.MustDefinition("create_order", 1,
		saga.Step[OrderData]{Name: "reserve", Invoke: inv("reserve_stock"), Compensate: inv("release_stock"), Timeout: time.Second},
		saga.Step[OrderData]{Name: "debit", Kind: saga.Pivot, Invoke: inv("debit_credit"), Timeout: time.Second},
	)

	h := sagatest.New(t, def, nil, OrderData{OrderID: "o-1"})
	h.Start()
	h.ExpectCommands("reserve_stock")
	h.Succeed()
	h.ExpectCommands("debit_credit")
	h.Reject("insufficient credit")
	h.ExpectCommands("release_stock")
	h.Succeed()
	h.ExpectStatus(saga.StatusCompensated)
}
