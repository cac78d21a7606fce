// Command orderservice runs the shop's orders. Configuration comes from
// the environment: see orderservice.Config.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sagabox/sagabox/orderservice"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := orderservice.ConfigFromEnv()
	if err == nil {
		err = orderservice.Run(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "orderservice:", err)
		os.Exit(1)
	}
}
