package domain

import (
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// Look-alike addresses. Unicode has several spellings of one visible
// address: "é" precomposed (NFC) or as "e" plus a combining accent (NFD),
// upper and lower case, and letters of other scripts drawn like Latin ones
// (Cyrillic "а" U+0430 next to Latin "a"). Each spelling would be a separate
// account that a person cannot tell apart from the real one. So an address is
// stored and looked up in one canonical form (CanonicalEmail: NFC, lower
// case), and NormalizeEmail refuses the local part or domain that mixes
// scripts ("pаypal": Latin and Cyrillic) or that is written entirely in
// Cyrillic or Greek letters that all look Latin ("аре": a whole-script
// confusable). Addresses in one non-Latin script that cannot pass for Latin
// ("иван@пример.рф") stay allowed.

// CanonicalEmail is the form an email is stored and looked up in: trimmed,
// NFC-normalized, lower case. It does not validate; NormalizeEmail does.
func CanonicalEmail(email string) string {
	return norm.NFC.String(strings.ToLower(norm.NFC.String(strings.TrimSpace(email))))
}

// confusableScripts are the scripts with letters drawn like Latin ones;
// other scripts (Han, Arabic...) are accepted as long as a part uses one.
var confusableScripts = map[string]*unicode.RangeTable{"Cyrillic": unicode.Cyrillic, "Greek": unicode.Greek}

// latinLookalikes are lower-case Cyrillic and Greek letters drawn like a Latin
// letter in common fonts (after the Unicode confusables list, confusables.txt).
const latinLookalikes = "аеорсухіјѕԁԛԝһӏԍкѵ" + // Cyrillic
	"αορυνικ" // Greek

// checkScripts reports which part of the address (local part or domain), if
// any, mixes scripts or is a whole-script confusable of Latin.
func checkScripts(part string) string {
	script := ""
	allLookalike, letters := true, 0
	for _, r := range part {
		if !unicode.IsLetter(r) {
			continue // digits, '.', '-', '+', combining marks: any script
		}
		s := scriptOf(r)
		if s == "" {
			return "contains a letter of no known script"
		}
		if script == "" {
			script = s
		} else if s != script {
			return "mixes " + script + " and " + s + " letters (a look-alike of another address)"
		}
		letters++
		if !strings.ContainsRune(latinLookalikes, r) {
			allLookalike = false
		}
	}
	if _, ok := confusableScripts[script]; ok && letters > 0 && allLookalike {
		return "is written in " + script + " letters that look Latin (a look-alike of another address)"
	}
	return ""
}

func scriptOf(r rune) string {
	if unicode.Is(unicode.Latin, r) {
		return "Latin"
	}
	for name, t := range confusableScripts {
		if unicode.Is(t, r) {
			return name
		}
	}
	for name, t := range unicode.Scripts {
		if name != "Common" && name != "Inherited" && unicode.Is(t, r) {
			return name
		}
	}
	return ""
}
