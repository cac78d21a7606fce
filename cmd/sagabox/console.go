package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/sagabox/sagabox/console"
)

func consoleCmd(ctx context.Context, e *env, args []string) error {
	fs := e.flags("console")
	listen := fs.String("listen", console.DefaultListen, "address to serve on; beyond loopback it needs -auth-token")
	token := fs.String("auth-token", os.Getenv(console.TokenEnv), "operator token required on every request (default $"+console.TokenEnv+")")
	tokenFile := fs.String("auth-token-file", os.Getenv(console.TokenEnv+"_FILE"), "read the operator token from this file (default $"+console.TokenEnv+"_FILE)")
	operator := fs.String("operator", defaultActor(), "actor recorded for actions whose operator gives no name")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *token == "" && *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("console: -auth-token-file: %w", err)
		}
		*token = strings.TrimSpace(string(b))
		if *token == "" {
			return fmt.Errorf("console: -auth-token-file %s is empty", *tokenFile)
		}
	}
	if err := console.CheckListen(*listen, *token); err != nil {
		return err
	}
	pool, err := e.connect(ctx)
	if err != nil {
		return err
	}
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("console: database: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	c, err := console.New(console.Config{Pool: pool, Logger: log, AuthToken: *token, Operator: *operator})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	fmt.Fprintf(e.out, "sagabox console: http://%s/\n", l.Addr())
	if *token != "" {
		fmt.Fprintln(e.out, "  it asks for the operator token")
	}
	return c.Serve(ctx, l)
}
