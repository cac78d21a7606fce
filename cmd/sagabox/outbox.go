package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

func outboxCmd(ctx context.Context, e *env, cmd string, args []string) error {
	fs := e.flags("outbox " + cmd)
	asJSON := fs.Bool("json", false, "machine-readable output")
	limit := 0
	if cmd == "parked" {
		fs.IntVar(&limit, "limit", 100, "how many to list")
	}
	var actor, reason *string
	if cmd == "retry" || cmd == "discard" {
		actor = fs.String("actor", defaultActor(), "who is acting (recorded in the history of the messages' sagas)")
		reason = fs.String("reason", "", "why (recorded in the history of the messages' sagas)")
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
	// The sagas of the messages get the action in their history.
	rows, err := pool.Query(ctx, `SELECT id, saga_id FROM sagabox.outbox WHERE id = ANY($1) AND parked_at IS NOT NULL AND saga_id <> ''`, ids)
	if err != nil {
		return err
	}
	type ofSaga struct {
		ID     int64
		SagaID string
	}
	sagaMsgs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ofSaga])
	if err != nil {
		return err
	}
	var n int64
	kind := saga.ActionOutboxRetry
	if cmd == "retry" {
		n, err = admin.Retry(ctx, ids...)
	} else {
		kind = saga.ActionOutboxDiscard
		n, err = admin.Discard(ctx, ids...)
	}
	if err != nil {
		return err
	}
	sagas := saga.NewAdmin(pool)
	for _, m := range sagaMsgs {
		sid, err := uuid.Parse(m.SagaID)
		if err != nil {
			continue
		}
		note := fmt.Sprintf("outbox message %d", m.ID)
		if *reason != "" {
			note += ": " + *reason
		}
		if err := sagas.Record(ctx, sid, kind, saga.ActionOptions{Actor: *actor, Reason: note}); err != nil && !errors.Is(err, saga.ErrNotFound) {
			return fmt.Errorf("outbox %s: done, but recording it in saga %s's history failed: %w", cmd, sid, err)
		}
	}
	if *asJSON {
		return writeJSON(e.out, map[string]any{"action": cmd, "messages": n})
	}
	fmt.Fprintf(e.out, "%s: %d message(s)\n", cmd, n)
	return nil
}
