// Command spin keeps every core busy until it is killed: the background load
// of `make test-loaded`, which runs the suite on a machine as busy as a
// shared CI runner. It exits by itself when its parent dies, so a killed make
// does not leave it spinning.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	procs := flag.Int("procs", runtime.NumCPU(), "goroutines spinning, one per core by default")
	flag.Parse()
	if *procs < 1 {
		fmt.Fprintln(os.Stderr, "spin: -procs must be at least 1")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(*procs)
	var sink atomic.Uint64
	for range *procs {
		go func() {
			var x uint64
			for {
				x = x*6364136223846793005 + 1442695040888963407
				if x == 0 { // never true in practice; keeps the loop from being optimized out
					sink.Add(1)
				}
			}
		}()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	parent := os.Getppid()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-sig:
			return
		case <-tick.C:
			if os.Getppid() != parent {
				return // the parent died: nobody will kill us
			}
		}
	}
}
