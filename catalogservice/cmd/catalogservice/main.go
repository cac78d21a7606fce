// Command catalogservice runs the shop's catalog. Configuration comes from
// the environment: see catalogservice.Config.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sagabox/sagabox/catalogservice"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := catalogservice.ConfigFromEnv()
	if err == nil {
		err = catalogservice.Run(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "catalogservice:", err)
		os.Exit(1)
	}
}
