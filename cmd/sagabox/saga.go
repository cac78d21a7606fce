package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/saga"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// defaultActor is who the CLI records an action for: the OS user.
func defaultActor() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if name == "" {
		name = "unknown"
	}
	return name + " (cli)"
}

func sagaCmd(ctx context.Context, e *env, cmd string, args []string) error {
	switch cmd {
	case "list":
		return sagaList(ctx, e, args)
	case "show":
		return sagaShow(ctx, e, args)
	case "retry", "abort":
		return sagaAction(ctx, e, cmd, args)
	}
	return fmt.Errorf("unknown saga command %q\n%s", cmd, usage)
}

func sagaList(ctx context.Context, e *env, args []string) error {
	fs := e.flags("saga list")
	status := fs.String("status", "", "only these statuses, comma-separated (running, compensating, failed, succeeded, compensated)")
	typ := fs.String("type", "", "only this saga type")
	failed := fs.Bool("failed", false, "only failed sagas")
	stuck := fs.Bool("stuck", false, "only unfinished sagas past their deadline or retry time (no orchestrator fires their timers)")
	idle := fs.String("idle", "", "only unfinished sagas unchanged for at least this long (10m, 2h)")
	limit := fs.Int("limit", console.DefaultPageSize, "page size, 1 to 1000")
	after := fs.String("after", "", "the cursor of the page to list (printed under the previous page)")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	// The console's filter, so that both take the same.
	q := url.Values{"status": {*status}, "type": {*typ}, "idle": {*idle}, "after": {*after}, "limit": {fmt.Sprint(*limit)}}
	if *failed {
		q.Set("failed", "1")
	}
	if *stuck {
		q.Set("stuck", "1")
	}
	opt, err := console.ParseFilter(q, console.DefaultPageSize)
	if err != nil {
		return fmt.Errorf("saga list: %w", err)
	}
	pool, err := e.connect(ctx)
	if err != nil {
		return err
	}
	admin := saga.NewAdmin(pool)
	page, err := admin.List(ctx, opt)
	if errors.Is(err, saga.ErrInvalidCursor) {
		return fmt.Errorf("saga list: -after %q is not a cursor a saga list printed: leave it out for the first page", *after)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		if page.Sagas == nil {
			page.Sagas = []saga.Info{}
		}
		return writeJSON(e.out, map[string]any{"sagas": page.Sagas, "next": page.Next})
	}
	now := time.Now()
	tw := tabwriter.NewWriter(e.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tVERSION\tSTATUS\tSTEP\tAGE\tREASON")
	defs := map[string]*saga.DefinitionInfo{}
	for _, s := range page.Sagas {
		key := fmt.Sprint(s.Type, "\x00", s.DefinitionVersion)
		def, ok := defs[key]
		if !ok {
			def, _ = admin.Definition(ctx, s.Type, s.DefinitionVersion) // nil when none was recorded
			defs[key] = def
		}
		step := s.CurrentStep(def)
		switch {
		case step == "":
			step = "-"
		case s.Compensation:
			step = "undo " + step
		}
		reason := s.LastError
		if reason == "" && s.Failure != nil && s.Status != saga.StatusSucceeded {
			reason = s.Failure.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\tv%d\t%s\t%s\t%s\t%s\n", s.ID, s.Type, s.DefinitionVersion, s.Status, step,
			now.Sub(s.CreatedAt).Round(time.Second), oneLine(reason, 100))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(page.Sagas) == 0 {
		fmt.Fprintln(e.out, "(no saga matches)")
	}
	if page.Next != "" {
		fmt.Fprintf(e.out, "more: add -after %s\n", page.Next)
	}
	return nil
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func sagaID(cmd string, args []string) (uuid.UUID, error) {
	if len(args) != 1 {
		return uuid.Nil, fmt.Errorf("saga %s: give one saga ID (see: sagabox saga list)", cmd)
	}
	id, err := uuid.Parse(args[0])
	if err != nil {
		return uuid.Nil, fmt.Errorf("saga %s: %q is not a saga ID (a UUID)", cmd, args[0])
	}
	return id, nil
}

func sagaShow(ctx context.Context, e *env, args []string) error {
	fs := e.flags("saga show")
	asJSON := fs.Bool("json", false, "machine-readable output")
	args, err := parse(fs, args)
	if err != nil {
		return err
	}
	id, err := sagaID("show", args)
	if err != nil {
		return err
	}
	pool, err := e.connect(ctx)
	if err != nil {
		return err
	}
	admin := saga.NewAdmin(pool)
	info, err := admin.Get(ctx, id)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(e.out, info)
	}
	def, _ := admin.Definition(ctx, info.Type, info.DefinitionVersion) // nil when none was recorded
	writeSaga(e.out, info, def, time.Now())
	return nil
}

const clock = "2006-01-02 15:04:05.000"

// writeSaga writes a saga and its timeline for a terminal.
func writeSaga(w io.Writer, s *saga.Info, def *saga.DefinitionInfo, now time.Time) {
	fmt.Fprintf(w, "saga %s  %s v%d  %s\n", s.ID, s.Type, s.DefinitionVersion, strings.ToUpper(string(s.Status)))
	fmt.Fprintf(w, "  started   %s UTC (%s ago)\n", s.CreatedAt.UTC().Format(clock), now.Sub(s.CreatedAt).Round(time.Second))
	if s.FinishedAt != nil {
		fmt.Fprintf(w, "  finished  %s UTC\n", s.FinishedAt.UTC().Format(clock))
	}
	phase := ""
	if s.Compensation {
		phase = "undo "
	}
	if step := s.CurrentStep(def); step != "" {
		fmt.Fprintf(w, "  step      %s%s (step %d, attempt %d)\n", phase, step, s.Step, s.Attempt)
	}
	if s.Deadline != nil {
		fmt.Fprintf(w, "  awaiting a reply until %s UTC\n", s.Deadline.UTC().Format(clock))
	}
	if s.NextRetryAt != nil {
		fmt.Fprintf(w, "  next attempt at %s UTC\n", s.NextRetryAt.UTC().Format(clock))
	}
	if f := s.Failure; f != nil {
		fmt.Fprintf(w, "  failure   %s %s after %d attempt(s): %s\n", f.StepName, f.Outcome, f.Attempts, f.Reason)
	}
	if s.LastError != "" {
		fmt.Fprintf(w, "  error     %s\n", s.LastError)
	}
	if r := s.Request; r != nil {
		fmt.Fprintf(w, "  pending   %s requested by %s at %s UTC: waiting for an orchestrator\n", r.Action, r.Actor, r.At.UTC().Format(clock))
	}
	fmt.Fprintln(w, "\ntimeline:")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  STEP\tPHASE\tATTEMPT\tSTARTED (UTC)\tTOOK\tOUTCOME\tPARTICIPANT SAID")
	for _, a := range s.History {
		p := "action"
		if a.Compensation {
			p = "compensation"
		}
		took, outcome := "", string(a.Outcome)
		if a.FinishedAt != nil {
			took = a.FinishedAt.Sub(a.StartedAt).Round(time.Millisecond).String()
		} else {
			took, outcome = now.Sub(a.StartedAt).Round(time.Millisecond).String()+" so far", "in flight"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%s\t%s\n", a.Name, p, a.Attempt, a.StartedAt.UTC().Format(clock), took, outcome, oneLine(a.Error, 120))
	}
	_ = tw.Flush()
	if len(s.History) == 0 {
		fmt.Fprintln(w, "  (no attempt yet)")
	}
	if len(s.Actions) > 0 {
		fmt.Fprintln(w, "\noperator actions:")
		for _, a := range s.Actions {
			line := fmt.Sprintf("  %s UTC  %s %s by %s", a.At.UTC().Format(clock), a.Action, a.Result, a.Actor)
			if a.Reason != "" {
				line += ": " + a.Reason
			}
			if a.Error != "" {
				line += " (" + a.Error + ")"
			}
			fmt.Fprintln(w, line)
		}
	}
	fmt.Fprintf(w, "\ndata: %s\n", oneLine(string(s.Data), 2000))
}

func sagaAction(ctx context.Context, e *env, cmd string, args []string) error {
	fs := e.flags("saga " + cmd)
	reason := fs.String("reason", "", "why (recorded in the saga's history; required for abort)")
	actor := fs.String("actor", defaultActor(), "who is acting (recorded in the saga's history)")
	asJSON := fs.Bool("json", false, "machine-readable output")
	args, err := parse(fs, args)
	if err != nil {
		return err
	}
	id, err := sagaID(cmd, args)
	if err != nil {
		return err
	}
	*reason = strings.TrimSpace(*reason)
	if cmd == "abort" && *reason == "" {
		return errors.New("saga abort: give -reason: it is recorded in the saga's history and handed to its compensations")
	}
	pool, err := e.connect(ctx)
	if err != nil {
		return err
	}
	admin := saga.NewAdmin(pool)
	if cmd == "retry" {
		if *reason == "" {
			*reason = "retried from the CLI"
		}
		err = admin.Retry(ctx, id, saga.ActionOptions{Actor: *actor, Reason: *reason})
	} else {
		err = admin.Abort(ctx, id, *reason, saga.ActionOptions{Actor: *actor})
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(e.out, map[string]any{"saga_id": id, "action": cmd, "result": saga.ResultRequested, "actor": *actor, "reason": *reason})
	}
	fmt.Fprintf(e.out, "%s of saga %s requested by %s: a running orchestrator of its type carries it out at its next poll (see: sagabox saga show %s)\n",
		cmd, id, *actor, id)
	return nil
}
