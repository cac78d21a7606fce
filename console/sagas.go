package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/saga"
)

// Statuses in the order the console shows them.
var statuses = []saga.Status{saga.StatusRunning, saga.StatusCompensating, saga.StatusFailed, saga.StatusSucceeded, saga.StatusCompensated}

// ParseFilter reads the sagas list's filter from a URL query: status
// (repeated or comma-separated), type, stuck=1 (past its deadline or retry
// time: no orchestrator fires its timers), failed=1, idle (a duration:
// unchanged for at least that long), after (the cursor of the page) and
// limit (pageSize when absent). The CLI's saga list takes the same. The
// error says which parameter is wrong and what it takes.
func ParseFilter(q url.Values, pageSize int) (saga.ListOptions, error) {
	opt := saga.ListOptions{Limit: pageSize}
	for _, v := range q["status"] {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			if !slices.Contains(statuses, saga.Status(s)) {
				return opt, fmt.Errorf("status %q is not a saga status: use running, compensating, failed, succeeded or compensated", s)
			}
			if !slices.Contains(opt.Status, saga.Status(s)) {
				opt.Status = append(opt.Status, saga.Status(s))
			}
		}
	}
	opt.Type = strings.TrimSpace(q.Get("type"))
	if len(opt.Type) > 200 {
		return opt, errors.New("type is longer than 200 characters")
	}
	var err error
	if opt.PastDeadline, err = parseBool(q, "stuck"); err != nil {
		return opt, err
	}
	if opt.Failed, err = parseBool(q, "failed"); err != nil {
		return opt, err
	}
	if v := q.Get("idle"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return opt, fmt.Errorf("idle %q is not a duration such as 10m or 2h", v)
		}
		opt.StuckFor = d
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return opt, fmt.Errorf("limit %q is not a number from 1 to 1000", v)
		}
		opt.Limit = n
	}
	opt.After = q.Get("after")
	return opt, nil
}

func parseBool(q url.Values, name string) (bool, error) {
	switch v := q.Get(name); v {
	case "":
		return false, nil
	case "1", "true", "on", "yes":
		return true, nil
	case "0", "false", "off", "no":
		return false, nil
	default:
		return false, fmt.Errorf("%s %q is not a yes or no: use %s=1 or leave it out", name, v, name)
	}
}

// filterQuery is opt as a URL query, without the cursor.
func filterQuery(opt saga.ListOptions, pageSize int) url.Values {
	q := url.Values{}
	for _, s := range opt.Status {
		q.Add("status", string(s))
	}
	if opt.Type != "" {
		q.Set("type", opt.Type)
	}
	if opt.PastDeadline {
		q.Set("stuck", "1")
	}
	if opt.Failed {
		q.Set("failed", "1")
	}
	if opt.StuckFor > 0 {
		q.Set("idle", opt.StuckFor.String())
	}
	if opt.Limit != pageSize {
		q.Set("limit", strconv.Itoa(opt.Limit))
	}
	return q
}

type statusCount struct {
	Status saga.Status
	Count  int64
	Link   string
	Active bool
}

type sagaRow struct {
	saga.Info
	CurrentStep string
	Reason      string
}

type sagasData struct {
	Counts   []statusCount
	Total    int64
	Types    []string
	Filter   saga.ListOptions
	Statuses []saga.Status
	Rows     []sagaRow
	Next     string // URL of the next page
	First    string // URL of the first page, when not on it
	Idle     string
}

func (c *Console) sagasPage(w http.ResponseWriter, r *http.Request) {
	opt, err := ParseFilter(r.URL.Query(), c.cfg.PageSize)
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, "Bad filter", err.Error())
		return
	}
	ctx := r.Context()
	pg, err := c.sagas.List(ctx, opt)
	if errors.Is(err, saga.ErrInvalidCursor) {
		c.fail(w, r, http.StatusBadRequest, "Bad page", "The page cursor (after) is not one this console made: start from the first page.")
		return
	}
	if err != nil {
		c.dbFail(w, r, err)
		return
	}
	counts, err := c.sagas.Counts(ctx)
	if err != nil {
		c.dbFail(w, r, err)
		return
	}
	d := sagasData{Filter: opt, Statuses: statuses}
	if opt.StuckFor > 0 {
		d.Idle = opt.StuckFor.String()
	}
	for _, s := range statuses {
		q := url.Values{"status": {string(s)}}
		d.Counts = append(d.Counts, statusCount{Status: s, Count: counts[s], Link: c.cfg.Prefix + "/sagas?" + q.Encode(),
			Active: len(opt.Status) == 1 && opt.Status[0] == s})
		d.Total += counts[s]
	}
	if d.Types, err = c.sagaTypes(r); err != nil {
		c.dbFail(w, r, err)
		return
	}
	defs := map[string]*saga.DefinitionInfo{}
	for _, s := range pg.Sagas {
		key := fmt.Sprintf("%s\x00%d", s.Type, s.DefinitionVersion)
		def, ok := defs[key]
		if !ok {
			def, _ = c.sagas.Definition(ctx, s.Type, s.DefinitionVersion) // nil when none was recorded
			defs[key] = def
		}
		row := sagaRow{Info: s, CurrentStep: s.CurrentStep(def), Reason: reasonOf(&s)}
		if s.Compensation && row.CurrentStep != "" {
			row.CurrentStep = "undo " + row.CurrentStep
		}
		d.Rows = append(d.Rows, row)
	}
	base := filterQuery(opt, c.cfg.PageSize)
	if pg.Next != "" {
		q := filterQuery(opt, c.cfg.PageSize)
		q.Set("after", pg.Next)
		d.Next = c.cfg.Prefix + "/sagas?" + q.Encode()
	}
	if opt.After != "" {
		d.First = c.cfg.Prefix + "/sagas?" + base.Encode()
	}
	c.render(w, r, http.StatusOK, "sagas", page{Title: "Sagas", Nav: "sagas", Live: true, Data: d})
}

// sagaTypes are the types for the filter's suggestions: the recorded
// definitions (a small table), not a scan of the sagas.
func (c *Console) sagaTypes(r *http.Request) ([]string, error) {
	var types []string
	for _, d := range c.cfg.Definitions {
		types = append(types, d.Name())
	}
	rows, err := c.cfg.Pool.Query(r.Context(), `SELECT DISTINCT saga_type FROM sagabox.saga_definitions`)
	if err != nil {
		return nil, err
	}
	recorded, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	types = append(types, recorded...)
	slices.Sort(types)
	return slices.Compact(types), nil
}

// reasonOf is the failure reason a row shows.
func reasonOf(s *saga.Info) string {
	switch {
	case s.Status == saga.StatusSucceeded:
		return ""
	case s.LastError != "":
		return s.LastError
	case s.Failure != nil:
		return s.Failure.Reason
	}
	return ""
}

type attemptRow struct {
	saga.Attempt
	Duration string
	Running  bool
}

type sagaData struct {
	Info     *saga.Info
	Def      *saga.DefinitionInfo
	Derived  bool // Def comes from the history, not a recorded definition
	Diagram  diagram
	Timeline []attemptRow
	CanRetry bool
	CanAbort bool
	Reason   string
	Current  string // the current step's name; "" once finished
}

func (c *Console) loadSaga(w http.ResponseWriter, r *http.Request) (*saga.Info, bool) {
	raw := r.PathValue("id")
	id, err := uuid.Parse(raw)
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, "Bad saga ID", fmt.Sprintf("%q is not a saga ID (a UUID such as 0193a1b2-...).", shorten(raw, 60)))
		return nil, false
	}
	info, err := c.sagas.Get(r.Context(), id)
	if errors.Is(err, saga.ErrNotFound) {
		c.fail(w, r, http.StatusNotFound, "No such saga", fmt.Sprintf("No saga has ID %s in this database: it may have finished and been cleaned up.", id))
		return nil, false
	}
	if err != nil {
		c.dbFail(w, r, err)
		return nil, false
	}
	return info, true
}

func (c *Console) sagaPage(w http.ResponseWriter, r *http.Request) {
	info, ok := c.loadSaga(w, r)
	if !ok {
		return
	}
	d := sagaData{Info: info, Reason: reasonOf(info)}

	def, err := c.sagas.Definition(r.Context(), info.Type, info.DefinitionVersion)
	switch {
	case errors.Is(err, saga.ErrNotFound):
		def, d.Derived = derivedDefinition(info), true
	case err != nil:
		c.dbFail(w, r, err)
		return
	}
	d.Def = def
	d.Current = info.CurrentStep(def)
	d.Diagram = drawDiagram(def, info, d.Derived)
	now := c.cfg.Now()
	for _, a := range info.History {
		row := attemptRow{Attempt: a}
		if a.FinishedAt != nil {
			row.Duration = shortDuration(a.FinishedAt.Sub(a.StartedAt))
		} else {
			row.Running, row.Duration = true, shortDuration(now.Sub(a.StartedAt))+" so far"
		}
		d.Timeline = append(d.Timeline, row)
	}
	d.CanRetry = info.Status == saga.StatusFailed && info.Request == nil
	d.CanAbort = info.Status == saga.StatusRunning && info.Request == nil
	c.render(w, r, http.StatusOK, "saga", page{Title: "Saga " + info.ID.String(), Nav: "sagas", Live: true, Data: d})
}

// derivedDefinition is the step list a saga's history shows, for a saga
// whose definition no orchestrator recorded: kinds are unknown.
func derivedDefinition(info *saga.Info) *saga.DefinitionInfo {
	d := &saga.DefinitionInfo{Type: info.Type, Version: info.DefinitionVersion}
	grow := func(i int) {
		for len(d.Steps) <= i {
			d.Steps = append(d.Steps, saga.StepInfo{Name: fmt.Sprintf("step %d", len(d.Steps))})
		}
	}
	for _, a := range info.History {
		grow(a.Step)
		if a.Name != "" {
			d.Steps[a.Step].Name = a.Name
		}
		if a.Compensation {
			d.Steps[a.Step].Compensation = true
		}
	}
	if info.Step >= 0 && (!info.Status.Finished() || info.Status == saga.StatusFailed) {
		grow(info.Step)
		if info.Deadline != nil && info.StepName != "" {
			d.Steps[info.Step].Name = info.StepName
		}
	}
	return d
}

type confirmData struct {
	Info     *saga.Info
	Step     string
	Action   string
	Operator string
	What     string
}

var sagaActions = map[string]string{
	"retry": "Restart the saga where it failed, with fresh attempts. A running orchestrator of its type carries the request out at its next timer poll.",
	"abort": "Compensate the saga: undo the steps it took, including the one in flight. Refused for a saga past its pivot.",
}

func (c *Console) sagaConfirm(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	what, ok := sagaActions[action]
	if !ok {
		c.fail(w, r, http.StatusNotFound, "No such action", fmt.Sprintf("%q is not an action on a saga: use retry or abort.", shorten(action, 40)))
		return
	}
	info, ok := c.loadSaga(w, r)
	if !ok {
		return
	}
	def, _ := c.sagas.Definition(r.Context(), info.Type, info.DefinitionVersion)
	c.render(w, r, http.StatusOK, "confirm", page{Title: "Confirm " + action, Nav: "sagas",
		Data: confirmData{Info: info, Step: info.CurrentStep(def), Action: action, Operator: c.operatorName(r), What: what}})
}

func (c *Console) sagaAction(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	if _, ok := sagaActions[action]; !ok {
		c.fail(w, r, http.StatusNotFound, "No such action", fmt.Sprintf("%q is not an action on a saga: use retry or abort.", shorten(action, 40)))
		return
	}
	if !c.checkCSRF(r) {
		c.fail(w, r, http.StatusForbidden, "Form expired", "The form's CSRF token is missing or does not match this browser: go back, reload the page and confirm again.")
		return
	}
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, "Bad saga ID", fmt.Sprintf("%q is not a saga ID.", shorten(r.PathValue("id"), 60)))
		return
	}
	reason, actor, ok := c.confirmed(w, r, fmt.Sprintf("%s/sagas/%s/%s", c.cfg.Prefix, id, action))
	if !ok {
		return
	}
	ctx := r.Context()
	switch action {
	case "retry":
		if reason == "" {
			reason = "retried from the console"
		}
		err = c.sagas.Retry(ctx, id, saga.ActionOptions{Actor: actor, Reason: reason})
	case "abort":
		if reason == "" {
			c.fail(w, r, http.StatusBadRequest, "Reason needed", "Say why you abort the saga: the reason is recorded in its history and given to its compensations.")
			return
		}
		err = c.sagas.Abort(ctx, id, reason, saga.ActionOptions{Actor: actor})
	}
	switch {
	case errors.Is(err, saga.ErrNotFound):
		c.fail(w, r, http.StatusNotFound, "No such saga", fmt.Sprintf("No saga has ID %s in this database.", id))
		return
	case errors.Is(err, saga.ErrWrongState):
		c.log.InfoContext(ctx, "console: saga action refused", "action", action, "saga_id", id, "actor", actor, "reason", reason, "error", err, "remote_addr", r.RemoteAddr)
		c.fail(w, r, http.StatusConflict, "Not possible now", err.Error())
		return
	case err != nil:
		c.dbFail(w, r, err)
		return
	}
	c.log.InfoContext(ctx, "console: saga action", "action", action, "saga_id", id, "actor", actor, "reason", reason, "remote_addr", r.RemoteAddr)
	notice := fmt.Sprintf("%s requested by %s: an orchestrator carries it out at its next poll.", strings.ToUpper(action[:1])+action[1:], actor)
	http.Redirect(w, r, fmt.Sprintf("%s/sagas/%s?notice=%s", c.cfg.Prefix, id, url.QueryEscape(notice)), http.StatusSeeOther)
}

// confirmed reads an action's POST once its CSRF token and target checked
// out: a form that was not confirmed goes to the confirmation page at
// confirmPage; otherwise it returns the operator's reason (at most 500
// characters, else a 400) and who they are. ok is false when w was answered.
func (c *Console) confirmed(w http.ResponseWriter, r *http.Request, confirmPage string) (reason, actor string, ok bool) {
	if r.PostFormValue("confirm") != "yes" {
		http.Redirect(w, r, confirmPage, http.StatusSeeOther)
		return "", "", false
	}
	reason = strings.TrimSpace(r.PostFormValue("reason"))
	if len(reason) > 500 {
		c.fail(w, r, http.StatusBadRequest, "Reason too long", "Keep the reason under 500 characters.")
		return "", "", false
	}
	return reason, c.actor(w, r), true
}
