package main

import (
	"context"
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/sagabox/sagabox/outbox"
)

func outboxCmd(ctx context.Context, e *env, cmd string, args []string) error {
	fs := e.flags("outbox " + cmd)
	asJSON := fs.Bool("json", false, "machine-readable output")
	limit := 0
	if cmd == "parked" {
		fs.IntVar(&limit, "limit", 100, "how many to list")
	}
	args, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch cmd {
	case "stats", "parked", "retry", "discard":
	default:
		return fmt.Errorf("unknown outbox command %q\n%s", cmd, usage)
	}
	pool, err := e.connect(ctx)
	if err != nil {
		return err
	}
	admin := outbox.NewAdmin(pool)
	switch cmd {
	case "stats":
		s, err := admin.Stats(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(e.out, map[string]any{"pending": s.Pending, "parked": s.Parked, "oldest_pending_age_seconds": s.OldestPendingAge.Seconds()})
		}
		fmt.Fprintf(e.out, "pending=%d parked=%d oldest_pending_age=%s\n", s.Pending, s.Parked, s.OldestPendingAge)
		return nil
	case "parked":
		ps, err := admin.ListParked(ctx, limit)
		if err != nil {
			return err
		}
		if *asJSON {
			if ps == nil {
				ps = []outbox.ParkedMessage{}
			}
			return writeJSON(e.out, ps)
		}
		tw := tabwriter.NewWriter(e.out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTOPIC\tKEY\tTYPE\tATTEMPTS\tPARKED AT\tLAST ERROR")
		for _, p := range ps {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", p.ID, p.Topic, p.Key, p.Type, p.Attempts, p.ParkedAt.Format("2006-01-02 15:04:05"), p.LastError)
		}
		return tw.Flush()
	}
	// retry, discard
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
	if cmd == "retry" {
		n, err = admin.Retry(ctx, ids...)
	} else {
		n, err = admin.Discard(ctx, ids...)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(e.out, map[string]any{"action": cmd, "messages": n})
	}
	fmt.Fprintf(e.out, "%s: %d message(s)\n", cmd, n)
	return nil
}
