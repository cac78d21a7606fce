// Command sagabox is the operator's tool for a database that uses sagabox:
//
//	sagabox migrate                      apply the outbox (and saga) migrations
//	sagabox console [-listen ADDR]       the web console (default 127.0.0.1:8090)
//	sagabox saga list [filters]          sagas, newest first (same filters as the console)
//	sagabox saga show ID                 one saga: its state, timeline, actions and data
//	sagabox saga retry ID [-reason R]    restart a failed saga where it failed
//	sagabox saga abort ID -reason R      compensate a running saga before its pivot
//	sagabox outbox stats                 pending and parked counts, oldest pending age
//	sagabox outbox parked [-limit N]     list parked messages
//	sagabox outbox retry ID...           put parked messages back in line
//	sagabox outbox discard ID...         delete parked messages for good
//
// The database comes from -database-url or DATABASE_URL; -json gives
// machine-readable output.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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

const usage = `usage: sagabox [-database-url URL] <command> [flags]
commands:
  help                                  this list
  migrate                               apply the sagabox migrations
  console [-listen ADDR] [-auth-token T | -auth-token-file F]
                                        the web console (default 127.0.0.1:8090); beyond loopback it requires
                                        the operator token (also $SAGABOX_CONSOLE_TOKEN or $SAGABOX_CONSOLE_TOKEN_FILE)
  saga list [-status S,S] [-type T] [-failed] [-stuck] [-idle D] [-limit N] [-after CURSOR] [-json]
                                        sagas, newest first; -stuck: past their deadline
  saga show ID [-json]                  one saga: state, failure, timeline, operator actions, data
  saga retry ID [-reason R] [-actor A]  restart a failed saga where it failed
  saga abort ID -reason R [-actor A]    compensate a running saga that has not passed its pivot
  outbox stats [-json]                  pending and parked counts
  outbox parked [-limit N] [-json]      list parked messages
  outbox retry ID... [-reason R]        put parked messages back in line
  outbox discard ID... [-reason R]      delete parked messages (both are recorded in their sagas' history)
Every command takes -database-url too (default $DATABASE_URL)`

// env is what a command runs with: the database, opened on first use, and
// where its output goes.
type env struct {
	dbURL string
	out   io.Writer
	pool  *pgxpool.Pool
}

func (e *env) connect(ctx context.Context) (*pgxpool.Pool, error) {
	if e.pool != nil {
		return e.pool, nil
	}
	if e.dbURL == "" {
		e.dbURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	pool, err := pgxpool.New(ctx, e.dbURL)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	e.pool = pool
	return pool, nil
}

func (e *env) close() {
	if e.pool != nil {
		e.pool.Close()
	}
}

// flags returns a subcommand's flag set, with -database-url.
func (e *env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("sagabox "+name, flag.ContinueOnError)
	fs.SetOutput(e.out)
	fs.StringVar(&e.dbURL, "database-url", e.dbURL, "Postgres URL (default $DATABASE_URL)")
	return fs
}

// parse parses a subcommand's flags, allowing them after positional
// arguments too (saga show ID -json), and returns the positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("sagabox", flag.ContinueOnError)
	fs.SetOutput(out)
	e := &env{out: out}
	fs.StringVar(&e.dbURL, "database-url", os.Getenv("DATABASE_URL"), "Postgres URL (default $DATABASE_URL)")
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
	defer e.close()
	err := dispatch(ctx, e, fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42P01" { // undefined_table
		return fmt.Errorf("%w: this database has no sagabox tables: check -database-url, or run sagabox migrate", err)
	}
	return err
}

func dispatch(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	switch args[0] {
	case "help":
		fs.Usage()
		return nil
	case "migrate":
		if _, err := parse(e.flags("migrate"), args[1:]); err != nil {
			return err
		}
		pool, err := e.connect(ctx)
		if err != nil {
			return err
		}
		for _, m := range migrations {
			if err := m.fn(ctx, pool); err != nil {
				return err
			}
			fmt.Fprintf(e.out, "%s: up to date\n", m.name)
		}
		return nil
	case "console":
		return consoleCmd(ctx, e, args[1:])
	case "saga":
		if len(args) < 2 {
			return errors.New(usage)
		}
		return sagaCmd(ctx, e, args[1], args[2:])
	case "outbox":
		if len(args) < 2 {
			return errors.New(usage)
		}
		return outboxCmd(ctx, e, args[1], args[2:])
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}
