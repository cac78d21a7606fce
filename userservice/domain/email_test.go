package domain

import (
	"errors"
	"testing"
)

// Issue 11.7: one visible address is one account. Spellings that differ
// only in Unicode normalization or case are the same address; addresses that
// imitate another with letters of another script are refused.
func TestEmailsAreCanonicalAndLookAlikesRefused(t *testing.T) {
	t.Parallel()
	same := map[string]string{
		"rene\u0301@example.com": "ren\u00e9@example.com", // NFD → NFC
		"REN\u00c9@Example.COM":  "ren\u00e9@example.com", // case, non-ASCII too
		"  ann@example.com ":     "ann@example.com",
		"иван@пример.рф":         "иван@пример.рф", // one script, not Latin look-alikes
		"ΑΝΝΑ.Σ@example.gr":      "αννα.σ@example.gr",
		"zoë+shop@example.com":   "zoë+shop@example.com",
	}
	for in, want := range same {
		got, err := NormalizeEmail(in)
		if err != nil || got != want {
			t.Errorf("NormalizeEmail(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{
		"p\u0430ypal@example.com",        // Cyrillic а in a Latin local part
		"ann@ex\u0430mple.com",           // ... in the domain
		"\u0430\u0440\u0435@example.com", // "аре": all Cyrillic, all Latin-looking
		"ann@\u0440\u0430\u0443\u0440\u0430\u04cf.com",
		"\u03bf\u03c1\u03b1@example.com", // Greek "ορα"
	} {
		_, err := NormalizeEmail(in)
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != "email" {
			t.Errorf("NormalizeEmail(%q): %v, want a ValidationError on email", in, err)
		}
	}
}
