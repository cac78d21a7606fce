// Package domain holds userservice's rules: what a valid user is, and how
// credit moves. It does no I/O.
package domain

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// StartingCreditCents is the credit every new user gets: 10000 cents
// (100.00). Configurable per service with STARTING_CREDIT_CENTS.
const StartingCreditCents int64 = 10_000

// Password bounds. The maximum keeps hashing cost bounded (a 64 KiB
// "password" would be hashed too); argon2id, unlike bcrypt, uses every byte.
const (
	MinPasswordLen = 8
	MaxPasswordLen = 128
	MaxNameLen     = 100
	MaxEmailLen    = 254
)

// Roles.
const (
	RoleUser  = "user"
	RoleAdmin = "admin"
)

// Errors the application maps to answers.
var (
	ErrEmailTaken         = errors.New("a user with this email already exists")
	ErrUserNotFound       = errors.New("user not found")
	ErrInsufficientCredit = errors.New("insufficient credit")
)

// ValidationError names the field that is wrong.
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Message }

// User is a customer (or an admin) and their credit.
type User struct {
	ID           uuid.UUID
	Email        string // canonical: NFC, lower case (CanonicalEmail)
	Name         string
	PasswordHash string // PHC string, see adapters.Argon2id
	Role         string
	CreditCents  int64
	CreatedAt    time.Time
}

// NormalizeEmail checks an email address and returns its canonical form
// (CanonicalEmail: NFC, lower case), the form it is stored and looked up in.
// It refuses an address whose local part or domain mixes scripts or
// imitates Latin with Cyrillic or Greek letters (see email.go).
func NormalizeEmail(email string) (string, error) {
	email = CanonicalEmail(email)
	if email == "" {
		return "", &ValidationError{"email", "is required"}
	}
	if len(email) > MaxEmailLen {
		return "", &ValidationError{"email", fmt.Sprintf("must be at most %d characters", MaxEmailLen)}
	}
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || a.Name != "" || !strings.Contains(email[strings.LastIndexByte(email, '@'):], ".") {
		return "", &ValidationError{"email", "is not a valid email address"}
	}
	at := strings.LastIndexByte(email, '@')
	for _, p := range []struct{ name, s string }{{"local part", email[:at]}, {"domain", email[at+1:]}} {
		if why := checkScripts(p.s); why != "" {
			return "", &ValidationError{"email", "is refused: its " + p.name + " " + why}
		}
	}
	return email, nil
}

// ValidatePassword checks a new password's length (in characters).
func ValidatePassword(pw string) error {
	n := utf8.RuneCountInString(pw)
	switch {
	case pw == "":
		return &ValidationError{"password", "is required"}
	case n < MinPasswordLen:
		return &ValidationError{"password", fmt.Sprintf("must be at least %d characters", MinPasswordLen)}
	case n > MaxPasswordLen:
		return &ValidationError{"password", fmt.Sprintf("must be at most %d characters", MaxPasswordLen)}
	}
	return nil
}

// NewUser makes a user with a new ID and the starting credit. The password
// must already be validated and hashed.
func NewUser(email, name, passwordHash, role string, startingCredit int64, now time.Time) (*User, error) {
	email, err := NormalizeEmail(email)
	if err != nil {
		return nil, err
	}
	name = strings.TrimSpace(name)
	switch {
	case name == "":
		return nil, &ValidationError{"name", "is required"}
	case utf8.RuneCountInString(name) > MaxNameLen:
		return nil, &ValidationError{"name", fmt.Sprintf("must be at most %d characters", MaxNameLen)}
	}
	if role != RoleUser && role != RoleAdmin {
		return nil, &ValidationError{"role", "must be user or admin"}
	}
	if startingCredit < 0 {
		return nil, &ValidationError{"credit", "must not be negative"}
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	return &User{ID: id, Email: email, Name: name, PasswordHash: passwordHash, Role: role,
		CreditCents: startingCredit, CreatedAt: now}, nil
}

// CanBeSeenBy reports whether the user with viewerID and viewerRole may read
// u: the user themself or an admin.
func (u *User) CanBeSeenBy(viewerID uuid.UUID, viewerRole string) bool {
	return viewerRole == RoleAdmin || viewerID == u.ID
}
