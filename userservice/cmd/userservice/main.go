// Command userservice runs the shop's user service. Configuration comes from
// the environment: see userservice.Config.
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/sagabox/sagabox/userservice"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := userservice.ConfigFromEnv()
	if err == nil {
		cfg.Logger = log
		err = userservice.Run(ctx, cfg)
	}
	if err != nil {
		log.Error("userservice: exiting", "err", err)
		os.Exit(1)
	}
}
