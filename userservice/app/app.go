// Package app holds userservice's use cases: sign-up, login, reading a
// user, bootstrapping the admin, and the credit commands of the order saga.
package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/userservice/domain"
)

// ErrInvalidCredentials is the one answer to a wrong email or a wrong
// password, so that login does not tell which emails exist.
var ErrInvalidCredentials = errors.New("invalid email or password")

// Repository stores users and credit charges (adapters.Users).
type Repository interface {
	Add(ctx context.Context, u *domain.User) error
	ByID(ctx context.Context, id uuid.UUID) (*domain.User, error)
	ByEmail(ctx context.Context, email string) (*domain.User, error)
	Update(ctx context.Context, id uuid.UUID, fn func(*domain.User) error) error
	UpdateCharge(ctx context.Context, tx pgx.Tx, orderID, userID string, fn func(*domain.Charge, *domain.User) error) error
}

// PasswordHasher hashes and checks passwords (adapters.Argon2id).
type PasswordHasher interface {
	Hash(ctx context.Context, password string) (string, error)
	Verify(ctx context.Context, password, encoded string) (bool, error)
}

// TokenIssuer signs access tokens (auth.Issuer).
type TokenIssuer interface {
	Issue(userID, role string) (token string, expires time.Time, err error)
}

// Application is userservice's use cases.
type Application struct {
	repo           Repository
	hasher         PasswordHasher
	tokens         TokenIssuer
	startingCredit int64
	now            func() time.Time
	dummyHash      string // verified against when the email is unknown, to take as long as a real check
}

// New returns the application. startingCredit is the credit of new users
// (domain.StartingCreditCents unless configured).
func New(ctx context.Context, repo Repository, hasher PasswordHasher, tokens TokenIssuer, startingCredit int64) (*Application, error) {
	dummy, err := hasher.Hash(ctx, "not a password anyone uses")
	if err != nil {
		return nil, err
	}
	now := func() time.Time { return time.Now().UTC().Truncate(time.Microsecond) } // what Postgres stores
	return &Application{repo: repo, hasher: hasher, tokens: tokens, startingCredit: startingCredit, now: now, dummyHash: dummy}, nil
}

// SignUp is the sign-up command.
type SignUp struct {
	Email    string
	Password string
	Name     string
}

// SignUp creates a user with the starting credit. Errors:
// *domain.ValidationError, domain.ErrEmailTaken.
func (a *Application) SignUp(ctx context.Context, cmd SignUp) (*domain.User, error) {
	return a.createUser(ctx, cmd, domain.RoleUser)
}

func (a *Application) createUser(ctx context.Context, cmd SignUp, role string) (*domain.User, error) {
	// Validate everything before paying for the hash.
	if _, err := domain.NewUser(cmd.Email, cmd.Name, "", role, a.startingCredit, a.now()); err != nil {
		return nil, err
	}
	if err := domain.ValidatePassword(cmd.Password); err != nil {
		return nil, err
	}
	hash, err := a.hasher.Hash(ctx, cmd.Password)
	if err != nil {
		return nil, fmt.Errorf("hash password: %w", err)
	}
	u, err := domain.NewUser(cmd.Email, cmd.Name, hash, role, a.startingCredit, a.now())
	if err != nil {
		return nil, err
	}
	if err := a.repo.Add(ctx, u); err != nil {
		return nil, err
	}
	return u, nil
}

// Token is a signed access token.
type Token struct {
	Token     string
	ExpiresAt time.Time
	UserID    uuid.UUID
}

// Login checks the credentials and issues a token. A wrong email and a wrong
// password are the same ErrInvalidCredentials, and take the same time.
func (a *Application) Login(ctx context.Context, email, password string) (Token, error) {
	u, err := a.repo.ByEmail(ctx, domain.CanonicalEmail(email))
	if errors.Is(err, domain.ErrUserNotFound) || len(password) > 4*domain.MaxPasswordLen {
		_, _ = a.hasher.Verify(ctx, password, a.dummyHash)
		return Token{}, ErrInvalidCredentials
	}
	if err != nil {
		return Token{}, err
	}
	ok, err := a.hasher.Verify(ctx, password, u.PasswordHash)
	if err != nil {
		return Token{}, fmt.Errorf("verify password of user %s: %w", u.ID, err)
	}
	if !ok {
		return Token{}, ErrInvalidCredentials
	}
	tok, exp, err := a.tokens.Issue(u.ID.String(), u.Role)
	if err != nil {
		return Token{}, err
	}
	return Token{Token: tok, ExpiresAt: exp, UserID: u.ID}, nil
}

// GetUser returns user id as seen by the viewer: the user themself or an
// admin. Anyone else gets domain.ErrUserNotFound, as for a user that does
// not exist, so IDs cannot be probed.
func (a *Application) GetUser(ctx context.Context, viewerID uuid.UUID, viewerRole string, id uuid.UUID) (*domain.User, error) {
	if viewerRole != domain.RoleAdmin && viewerID != id {
		return nil, domain.ErrUserNotFound
	}
	u, err := a.repo.ByID(ctx, id)
	if err != nil {
		return nil, err
	}
	if !u.CanBeSeenBy(viewerID, viewerRole) {
		return nil, domain.ErrUserNotFound
	}
	return u, nil
}

// BootstrapAdmin makes sure an admin with email exists: it creates one with
// password when no account has that email, and returns the existing account
// when it already is an admin. It never changes an existing account's role
// or password: an account someone signed up with that email before the
// first start-up must not become an admin (that would hand the role, with a
// password the attacker chose, to whoever registered the email first). Such
// an account stops start-up with an *AdminEmailTakenError naming it.
func (a *Application) BootstrapAdmin(ctx context.Context, email, password string) (*domain.User, error) {
	norm, err := domain.NormalizeEmail(email)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	u, err := a.repo.ByEmail(ctx, norm)
	if errors.Is(err, domain.ErrUserNotFound) {
		u, err = a.createUser(ctx, SignUp{Email: norm, Password: password, Name: "Administrator"}, domain.RoleAdmin)
		if errors.Is(err, domain.ErrEmailTaken) { // another instance (or a sign-up) won the race
			u, err = a.repo.ByEmail(ctx, norm)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	if u.Role != domain.RoleAdmin {
		return nil, &AdminEmailTakenError{Email: norm, UserID: u.ID, Role: u.Role}
	}
	return u, nil
}

// AdminEmailTakenError is BootstrapAdmin's refusal to promote an existing
// account that is not an admin.
type AdminEmailTakenError struct {
	Email  string
	UserID uuid.UUID
	Role   string
}

func (e *AdminEmailTakenError) Error() string {
	return fmt.Sprintf("admin: the account %s (user %s) already exists with role %q and is not promoted: "+
		"set ADMIN_EMAIL to an address no account uses, or, if that account really is yours, "+
		"grant the role in the database (UPDATE users SET role = 'admin' WHERE id = '%s')",
		e.Email, e.UserID, e.Role, e.UserID)
}

// DebitCredit takes amountCents from the user's credit for the order, inside
// tx, once per order (see domain.ChargeStatus). A refusal (insufficient
// credit, unknown user, compensated order) is an Outcome with OK false, not
// an error: it is recorded in tx, so commit tx either way. An error means
// nothing happened and the command may be retried.
func (a *Application) DebitCredit(ctx context.Context, tx pgx.Tx, orderID, userID string, amountCents int64) (domain.Outcome, error) {
	if orderID == "" {
		return domain.Outcome{}, errors.New("debit credit: order ID is required")
	}
	var out domain.Outcome
	err := a.repo.UpdateCharge(ctx, tx, orderID, userID, func(c *domain.Charge, u *domain.User) error {
		out = c.Debit(u, amountCents)
		return nil
	})
	return out, err
}

// RefundCredit gives back what DebitCredit took for the order, inside tx,
// once. A refund without a debit does nothing but is remembered, so a debit
// arriving after it does nothing either. The amount refunded is the one
// debited; amountCents is only checked against it.
func (a *Application) RefundCredit(ctx context.Context, tx pgx.Tx, orderID, userID string, amountCents int64) (domain.Outcome, error) {
	if orderID == "" {
		return domain.Outcome{}, errors.New("refund credit: order ID is required")
	}
	var out domain.Outcome
	err := a.repo.UpdateCharge(ctx, tx, orderID, userID, func(c *domain.Charge, u *domain.User) error {
		if c.Status == domain.ChargeDebited && amountCents != 0 && amountCents != c.AmountCents {
			// Refund what was taken, not what the command says; the
			// mismatch is a bug upstream worth seeing in the reason.
			out = c.Refund(u)
			out.Reason = fmt.Sprintf("refunded the %d cents debited, not the %d asked", c.AmountCents, amountCents)
			return nil
		}
		out = c.Refund(u)
		return nil
	})
	return out, err
}
