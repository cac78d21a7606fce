// Command userservice runs the shop's user service. Configuration comes from
// the environment: see userservice.Config.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sagabox/sagabox/userservice"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := userservice.ConfigFromEnv()
	if err == nil {
		err = userservice.Run(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "userservice:", err)
		os.Exit(1)
	}
}
