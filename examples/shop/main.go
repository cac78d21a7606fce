// Command shop runs the whole shop in one process, with only Go and a
// Postgres: the three services, their relays and the order saga, an
// in-process Kafka on 127.0.0.1:9092 and Schema Registry on
// 127.0.0.1:8081, and the operator console over the order service's
// database on 127.0.0.1:8090. With -scenario it plays three orders, prints
// each saga's timeline, and leaves a fourth order's saga failed on purpose
// (the payment processor was down), with how to fix it from the console and
// the CLI.
//
//	go run ./examples/shop -scenario
//
// The ports are docker-compose.yml's (8001-8003, 9092, 8081) unless
// -users-port, -catalog-port, -orders-port, -kafka-port, -registry-port or
// SHOP_USERS_PORT... SHOP_REGISTRY_PORT say otherwise (0: any free port).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/sagabox/sagabox/examples/shop/shop"
)

func main() {
	scenario := flag.Bool("scenario", false, "play a scripted scenario (approved, no credit, no stock, one saga left failed for the console) and exit")
	stay := flag.Bool("stay", false, "with -scenario: keep the shop running afterwards")
	verbose := flag.Bool("v", false, "print the services' logs")
	ports, err := shop.PortsFromEnv(shop.DefaultPorts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ports.RegisterFlags(flag.CommandLine)
	flag.Parse()
	if err := run(*scenario, *stay, *verbose, ports); err != nil {
		// The shop's errors say "shop: " themselves.
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(scenario, stay, verbose bool, ports shop.Ports) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := shop.ConfigFromEnv()
	cfg.Ports = ports
	if verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	fmt.Println("Starting the shop (Postgres, in-process Kafka and Schema Registry, three services)...")
	s, err := shop.Start(ctx, cfg)
	if err != nil {
		return err
	}
	printWelcome(s)
	if scenario {
		r, err := s.Client().PlayScenario(ctx, os.Stdout)
		if err == nil {
			_, err = s.LeaveOneFailed(ctx, os.Stdout, r.Customer)
		}
		if err != nil {
			_ = s.Close()
			return err
		}
		if !stay {
			fmt.Println("\nDone. Stopping the shop (run with -stay to keep it running).")
			return s.Close()
		}
	}
	fmt.Println("\nPress Ctrl-C to stop.")
	select {
	case <-ctx.Done():
		fmt.Println("\nStopping: draining requests, consumers and outboxes...")
	case <-s.Done():
	}
	return s.Wait()
}

func printWelcome(s *shop.Shop) {
	a := s.Admin
	fmt.Printf(`
The shop is running.

  users     %s   (POST /signup, POST /login, GET /users/{id})
  catalog   %s   (GET /products, POST /products as admin, GET /catalog/orders/{id})
  orders    %s   (POST /orders, GET /orders/{id})
  Kafka     %s        (kfake: topics %s)
  Registry  %s   (srfake)
  Postgres  databases %s
  console   %s   (the order service's sagas and outbox: retry, abort, discard)

`, s.UsersURL, s.CatalogURL, s.OrdersURL, s.Brokers[0], "user.commands, catalog.commands, order.saga.replies, order.events",
		s.RegistryURL, fmt.Sprint(s.Databases), s.ConsoleURL)
	if a.Generated {
		fmt.Printf("Admin: %s / %s  (generated; set ADMIN_EMAIL and ADMIN_PASSWORD to choose)\n", a.Email, a.Password)
		if a.Email != shop.DefaultAdminEmail {
			fmt.Printf("       (%s is left from an earlier run, with the password printed then)\n", shop.DefaultAdminEmail)
		}
	} else {
		fmt.Printf("Admin: %s (password from ADMIN_PASSWORD)\n", a.Email)
	}
	fmt.Printf(`
Try it (with jq):

  curl -s -XPOST %[1]s/signup -H 'Content-Type: application/json' \
    -d '{"email":"me@example.com","password":"correct horse battery","name":"Me"}'
  TOKEN=$(curl -s -XPOST %[1]s/login -H 'Content-Type: application/json' \
    -d '{"email":"me@example.com","password":"correct horse battery"}' | jq -r .token)
  curl -s %[2]s/products | jq
  curl -s -XPOST %[3]s/orders -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -H 'Prefer: wait=10' -d '{"items":[{"sku":"TEA-1","quantity":2}]}' | jq   # the decided order: APPROVED
`, s.UsersURL, s.CatalogURL, s.OrdersURL)
}
