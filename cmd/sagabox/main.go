// Command sagabox is the operator's tool for a database that uses sagabox:
//
//	sagabox migrate                      apply the outbox (and saga) migrations
//	sagabox outbox stats                 pending and parked counts, oldest pending age
//	sagabox outbox parked [-limit N]     list parked messages
//	sagabox outbox retry ID...           put parked messages back in line
//	sagabox outbox discard ID...         delete parked messages for good
//
// The database comes from -database-url or DATABASE_URL.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sagabox:", err)
		os.Exit(1)
	}
}

// migrations are applied in this order by "sagabox migrate".
var migrations = []struct {
	name string
	fn   func(context.Context, *pgxpool.Pool) error
}{
	{"outbox", func(ctx context.Context, p *pgxpool.Pool) error { return outbox.Migrate(ctx, p) }},
	{"saga", func(ctx context.Context, p *pgxpool.Pool) error { return saga.Migrate(ctx, p) }},
}

const usage = `usage: sagabox [-database-url URL] <command>
commands:
  help                       this list
  migrate                    apply the sagabox migrations
  outbox stats               pending and parked counts
  outbox parked [-limit N]   list parked messages
  outbox retry ID...         put parked messages back in line
  outbox discard ID...       delete parked messages`

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("sagabox", flag.ContinueOnError)
	fs.SetOutput(out)
	dbURL := fs.String("database-url", os.Getenv("DATABASE_URL"), "Postgres URL (default $DATABASE_URL)")
	fs.Usage = func() {
		fmt.Fprintln(out, usage)
		fmt.Fprintln(out, "flags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil // -h: the usage went to out
		}
		return err
	}
	args = fs.Args()
	if len(args) == 0 {
		return errors.New(usage)
	}
	if args[0] == "help" {
		fs.Usage()
		return nil
	}
	if *dbURL == "" {
		*dbURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	pool, err := pgxpool.New(ctx, *dbURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()

	switch args[0] {
	case "migrate":
		for _, m := range migrations {
			if err := m.fn(ctx, pool); err != nil {
				return err
			}
			fmt.Fprintf(out, "%s: up to date\n", m.name)
		}
		return nil
	case "outbox":
		if len(args) < 2 {
			return errors.New(usage)
		}
		return outboxCmd(ctx, outbox.NewAdmin(pool), args[1], args[2:], out)
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

func outboxCmd(ctx context.Context, admin *outbox.Admin, cmd string, args []string, out io.Writer) error {
	switch cmd {
	case "stats":
		s, err := admin.Stats(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "pending=%d parked=%d oldest_pending_age=%s\n", s.Pending, s.Parked, s.OldestPendingAge)
		return nil
	case "parked":
		fs := flag.NewFlagSet("parked", flag.ContinueOnError)
		limit := fs.Int("limit", 100, "how many to list")
		if err := fs.Parse(args); err != nil {
			return err
		}
		ps, err := admin.ListParked(ctx, *limit)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTOPIC\tKEY\tTYPE\tATTEMPTS\tPARKED AT\tLAST ERROR")
		for _, p := range ps {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", p.ID, p.Topic, p.Key, p.Type, p.Attempts, p.ParkedAt.Format("2006-01-02 15:04:05"), p.LastError)
		}
		return tw.Flush()
	case "retry", "discard":
		if len(args) == 0 {
			return fmt.Errorf("outbox %s: give the IDs of parked messages (see: sagabox outbox parked)", cmd)
		}
		ids := make([]int64, 0, len(args))
		for _, a := range args {
			id, err := strconv.ParseInt(a, 10, 64)
			if err != nil {
				return fmt.Errorf("outbox %s: %q is not a message ID", cmd, a)
			}
			ids = append(ids, id)
		}
		var n int64
		var err error
		if cmd == "retry" {
			n, err = admin.Retry(ctx, ids...)
		} else {
			n, err = admin.Discard(ctx, ids...)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: %d message(s)\n", cmd, n)
		return nil
	}
	return fmt.Errorf("unknown outbox command %q\n%s", cmd, usage)
}
