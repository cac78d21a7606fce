package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// The publish rate comes from Postgres's own counter of rows deleted from
// sagabox.outbox (pg_stat_user_tables.n_tup_del): the relay deletes a row
// once Kafka has it, so the counter's growth is the publish rate (plus
// discarded messages, which are rare). Reading it costs the hot path
// nothing: no trigger, no index, no extra write. Postgres updates the
// counter within a second or so of a commit, and resets it on a crash or
// pg_stat_reset (a drop is drawn as zero).
const (
	sampleEvery  = 5 * time.Second
	sampleWindow = 15 * time.Minute
	// minSampleGap: a page view samples only if the last sample is older.
	minSampleGap = 2 * time.Second
)

type sample struct {
	At      time.Time
	Deleted int64
}

func (c *Console) sample(ctx context.Context) error {
	var n int64
	err := c.cfg.Pool.QueryRow(ctx, `SELECT coalesce(n_tup_del, 0) FROM pg_stat_user_tables WHERE schemaname = 'sagabox' AND relname = 'outbox'`).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return errors.New("no sagabox.outbox table: run sagabox migrate")
	}
	if err != nil {
		return err
	}
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.samples = append(c.samples, sample{At: now, Deleted: n})
	cut := 0
	for cut < len(c.samples) && now.Sub(c.samples[cut].At) > sampleWindow {
		cut++
	}
	c.samples = c.samples[cut:]
	return nil
}

func (c *Console) sampleIfStale(ctx context.Context) {
	c.mu.Lock()
	stale := len(c.samples) == 0 || c.cfg.Now().Sub(c.samples[len(c.samples)-1].At) >= minSampleGap
	c.mu.Unlock()
	if stale {
		if err := c.sample(ctx); err != nil {
			c.log.WarnContext(ctx, "console: sample outbox", "error", err)
		}
	}
}

// chart is the publish rate drawn as an SVG polyline.
type chart struct {
	Width, Height int
	Points        string
	MaxLabel      string
	LastRate      string
	Span          string
	Empty         bool
	Bars          []bar
}

type bar struct{ X, Y, W, H int }

func (c *Console) rateChart() chart {
	c.mu.Lock()
	s := append([]sample(nil), c.samples...)
	c.mu.Unlock()
	ch := chart{Width: 600, Height: 110, Empty: len(s) < 2}
	if ch.Empty {
		ch.LastRate, ch.MaxLabel = "measuring…", "0/s"
		return ch
	}
	type pt struct {
		at   time.Time
		rate float64
	}
	var pts []pt
	peak := 0.0
	for i := 1; i < len(s); i++ {
		dt := s[i].At.Sub(s[i-1].At).Seconds()
		r := 0.0
		if dt > 0 && s[i].Deleted >= s[i-1].Deleted {
			r = float64(s[i].Deleted-s[i-1].Deleted) / dt
		}
		pts = append(pts, pt{s[i].At, r})
		peak = max(peak, r)
	}
	if peak == 0 {
		peak = 1
	}
	start, end := s[0].At, s[len(s)-1].At
	span := end.Sub(start).Seconds()
	if span <= 0 {
		span = 1
	}
	plotH := ch.Height - 10
	var sb strings.Builder
	fmt.Fprintf(&sb, "0,%d ", ch.Height)
	for _, p := range pts {
		x := int(float64(ch.Width) * p.at.Sub(start).Seconds() / span)
		y := ch.Height - int(float64(plotH)*p.rate/peak)
		fmt.Fprintf(&sb, "%d,%d ", x, y)
	}
	fmt.Fprintf(&sb, "%d,%d", ch.Width, ch.Height)
	ch.Points = sb.String()
	ch.MaxLabel = fmt.Sprintf("%.1f/s", peak)
	ch.LastRate = fmt.Sprintf("%.1f messages/s", pts[len(pts)-1].rate)
	ch.Span = shortDuration(end.Sub(start))
	return ch
}

type topicRow struct {
	Topic     string
	Pending   int64
	OldestAge time.Duration
}

type outboxData struct {
	Stats  outbox.Stats
	Topics []topicRow
	Parked []outbox.ParkedMessage
	Chart  chart
}

// pendingByTopic walks the outbox table, which holds only the backlog
// (published rows are deleted): no index needed.
func (c *Console) pendingByTopic(ctx context.Context) ([]topicRow, error) {
	rows, err := c.cfg.Pool.Query(ctx, `SELECT topic, count(*), extract(epoch FROM now() - min(created_at))
FROM sagabox.outbox WHERE parked_at IS NULL GROUP BY topic ORDER BY count(*) DESC, topic`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (topicRow, error) {
		var t topicRow
		var age float64
		err := r.Scan(&t.Topic, &t.Pending, &age)
		t.OldestAge = time.Duration(age * float64(time.Second))
		return t, err
	})
}

const parkedShown = 200

func (c *Console) outboxPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	c.sampleIfStale(ctx)
	var d outboxData
	var err error
	if d.Stats, err = c.outbox.Stats(ctx); err != nil {
		c.dbFail(w, r, err)
		return
	}
	if d.Topics, err = c.pendingByTopic(ctx); err != nil {
		c.dbFail(w, r, err)
		return
	}
	if d.Parked, err = c.outbox.ListParked(ctx, parkedShown); err != nil {
		c.dbFail(w, r, err)
		return
	}
	d.Chart = c.rateChart()
	c.render(w, r, http.StatusOK, "outbox", page{Title: "Outbox", Nav: "outbox", Live: true, Data: d})
}

var outboxActions = map[string]string{
	"retry":   "Put the message back in line with its attempts reset. It is published after the messages of its key that went out while it was parked.",
	"discard": "Delete the message for good: it is never published.",
}

type outboxConfirmData struct {
	Message  outbox.ParkedMessage
	Action   string
	What     string
	Operator string
}

func (c *Console) parkedByID(w http.ResponseWriter, r *http.Request) (outbox.ParkedMessage, bool) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		c.fail(w, r, http.StatusBadRequest, "Bad message ID", fmt.Sprintf("%q is not an outbox message ID (a positive number).", shorten(raw, 40)))
		return outbox.ParkedMessage{}, false
	}
	var p outbox.ParkedMessage
	err = c.cfg.Pool.QueryRow(r.Context(), `SELECT id, message_id::text, topic, key, message_type, attempts, coalesce(last_error, ''), created_at, parked_at
FROM sagabox.outbox WHERE id = $1 AND parked_at IS NOT NULL`, id).
		Scan(&p.ID, &p.MessageID, &p.Topic, &p.Key, &p.Type, &p.Attempts, &p.LastError, &p.CreatedAt, &p.ParkedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		c.fail(w, r, http.StatusNotFound, "No such parked message", fmt.Sprintf("No parked message has ID %d: it may have been retried or discarded already.", id))
		return p, false
	}
	if err != nil {
		c.dbFail(w, r, err)
		return p, false
	}
	return p, true
}

func (c *Console) outboxConfirm(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	what, ok := outboxActions[action]
	if !ok {
		c.fail(w, r, http.StatusNotFound, "No such action", fmt.Sprintf("%q is not an action on a parked message: use retry or discard.", shorten(action, 40)))
		return
	}
	p, ok := c.parkedByID(w, r)
	if !ok {
		return
	}
	c.render(w, r, http.StatusOK, "confirm_outbox", page{Title: "Confirm " + action, Nav: "outbox",
		Data: outboxConfirmData{Message: p, Action: action, What: what, Operator: c.operatorName(r)}})
}

func (c *Console) outboxAction(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	if _, ok := outboxActions[action]; !ok {
		c.fail(w, r, http.StatusNotFound, "No such action", fmt.Sprintf("%q is not an action on a parked message: use retry or discard.", shorten(action, 40)))
		return
	}
	if !c.checkCSRF(r) {
		c.fail(w, r, http.StatusForbidden, "Form expired", "The form's CSRF token is missing or does not match this browser: go back, reload the page and confirm again.")
		return
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		c.fail(w, r, http.StatusBadRequest, "Bad message ID", fmt.Sprintf("%q is not an outbox message ID.", shorten(r.PathValue("id"), 40)))
		return
	}
	reason, actor, ok := c.confirmed(w, r, fmt.Sprintf("%s/outbox/%d/%s", c.cfg.Prefix, id, action))
	if !ok {
		return
	}
	ctx := r.Context()
	// A message of a saga (a command it sent, a reply to it): the action
	// goes into the saga's history too, so whoever looks at the saga next
	// sees why its command went out late, or never.
	var sagaID string
	if err := c.cfg.Pool.QueryRow(ctx, `SELECT saga_id FROM sagabox.outbox WHERE id = $1 AND parked_at IS NOT NULL`, id).Scan(&sagaID); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		c.dbFail(w, r, err)
		return
	}
	if action == "retry" {
		_, err = c.outbox.Retry(ctx, id)
	} else {
		_, err = c.outbox.Discard(ctx, id)
	}
	switch {
	case errors.Is(err, outbox.ErrNotFound):
		c.fail(w, r, http.StatusNotFound, "No such parked message", fmt.Sprintf("No parked message has ID %d: it may have been retried or discarded already.", id))
		return
	case err != nil:
		c.dbFail(w, r, err)
		return
	}
	c.log.InfoContext(ctx, "console: outbox action", "action", action, "outbox_id", id, "saga_id", sagaID, "actor", actor, "reason", reason, "remote_addr", r.RemoteAddr)
	if sid, err := uuid.Parse(sagaID); err == nil {
		kind := saga.ActionOutboxRetry
		if action == "discard" {
			kind = saga.ActionOutboxDiscard
		}
		note := fmt.Sprintf("outbox message %d", id)
		if reason != "" {
			note += ": " + reason
		}
		if err := c.sagas.Record(ctx, sid, kind, saga.ActionOptions{Actor: actor, Reason: note}); err != nil && !errors.Is(err, saga.ErrNotFound) {
			c.log.ErrorContext(ctx, "console: record the outbox action in the saga's history", "saga_id", sid, "error", err)
		}
	}
	notice := fmt.Sprintf("Message %d: %s done by %s.", id, action, actor)
	http.Redirect(w, r, c.cfg.Prefix+"/outbox?notice="+url.QueryEscape(notice), http.StatusSeeOther)
}
