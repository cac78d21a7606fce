package saga

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// errRunTwice is what a second Run returns.
var errRunTwice = errors.New("saga: Run was called twice")

// runOnce makes a second Run fail: a Run's consumers, batchers and timers
// are not made to be started again, and two Runs of one value would consume
// everything twice.
type runOnce struct{ started atomic.Bool }

func (o *runOnce) start(what string) error {
	if !o.started.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: %s is already running or has run: build a new one to run again", errRunTwice, what)
	}
	return nil
}
