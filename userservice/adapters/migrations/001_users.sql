-- Users and their credit. Email is unique case-insensitively: the service
-- stores it lower-cased, and the index makes the database the judge when two
-- sign-ups race (the loser gets a unique violation, answered 409).
CREATE TABLE users (
	id            uuid        PRIMARY KEY,
	email         text        NOT NULL,
	name          text        NOT NULL,
	password_hash text        NOT NULL,
	role          text        NOT NULL CHECK (role IN ('user', 'admin')),
	-- The last line of defence against an overdraft: even a buggy debit
	-- cannot commit a negative balance.
	credit_cents  bigint      NOT NULL CHECK (credit_cents >= 0),
	created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- One row per order that ever touched credit: the participant barrier that
-- makes DebitCredit and RefundCredit idempotent and order-insensitive (see
-- domain.ChargeStatus). order_id and user_id are text, not foreign keys: a
-- refund may arrive for an order whose debit never happened, even for a user
-- that does not exist, and must still be remembered.
CREATE TABLE credit_charges (
	order_id     text        PRIMARY KEY,
	user_id      text        NOT NULL,
	amount_cents bigint      NOT NULL,
	status       text        NOT NULL CHECK (status IN ('DEBITED', 'REFUSED', 'REFUNDED', 'VOIDED')),
	reason       text        NOT NULL DEFAULT '',
	created_at   timestamptz NOT NULL DEFAULT now(),
	updated_at   timestamptz NOT NULL DEFAULT now()
);
