package httpx

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxWait is the longest a client may ask a request to wait for a result
// (Prefer: wait=N, ?wait=N): 30 s.
const MaxWait = 30 * time.Second

// PreferWait reads the wait preference of RFC 7240 (`Prefer: wait=10`,
// possibly among others: `Prefer: respond-async, wait=5`), in seconds,
// capped at max. ok is false when the client expressed none (or a
// malformed one: a preference is a hint, never an error). Answer with
// `Preference-Applied: wait=N` (PreferenceApplied) when it was honoured.
func PreferWait(r *http.Request, max time.Duration) (d time.Duration, ok bool) {
	for _, line := range r.Header.Values("Prefer") {
		for _, pref := range strings.Split(line, ",") {
			kv, _, _ := strings.Cut(pref, ";") // parameters of a preference are ignored
			k, v, found := strings.Cut(strings.TrimSpace(kv), "=")
			if !found || !strings.EqualFold(strings.TrimSpace(k), "wait") {
				continue
			}
			n, err := strconv.Atoi(strings.Trim(strings.TrimSpace(v), `"`))
			if err != nil || n < 0 {
				return 0, false
			}
			return min(time.Duration(n)*time.Second, max), true
		}
	}
	return 0, false
}

// PreferenceApplied sets `Preference-Applied: wait=N` (whole seconds).
func PreferenceApplied(w http.ResponseWriter, wait time.Duration) {
	w.Header().Set("Preference-Applied", "wait="+strconv.Itoa(int(wait/time.Second)))
	w.Header().Add("Vary", "Prefer")
}

// QueryWait reads ?wait=N (whole seconds, 0 to max) for a long poll: 0
// without the parameter, a 400 invalid_wait naming it when malformed or
// out of range.
func QueryWait(r *http.Request, max time.Duration) (time.Duration, error) {
	s := r.URL.Query().Get("wait")
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || time.Duration(n)*time.Second > max {
		return 0, BadRequest("invalid_wait", "wait must be a whole number of seconds from 0 to %d", int(max/time.Second)).With("field", "wait")
	}
	return time.Duration(n) * time.Second, nil
}
