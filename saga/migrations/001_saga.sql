-- Saga orchestration state. One row per saga instance; every state change
-- locks the row (SELECT ... FOR UPDATE) and bumps version in the same
-- transaction that writes the next command into the outbox, so two replies,
-- or a reply and a timeout, for one saga can never both apply (no lost
-- update), and a state change never commits without its command.
CREATE TABLE sagabox.sagas (
	id                 uuid        PRIMARY KEY,
	saga_type          text        NOT NULL,
	-- The definition version the saga started with.
	definition_version int         NOT NULL,
	status             text        NOT NULL CHECK (status IN ('running', 'compensating', 'succeeded', 'compensated', 'failed')),
	-- Index of the current step (the one being run, or being compensated).
	step               int         NOT NULL,
	attempt            int         NOT NULL,
	-- True once the saga entered compensation; kept when it ends failed so
	-- an operator retry resumes compensating.
	compensation       boolean     NOT NULL DEFAULT false,
	-- The saga's data as JSON (the Go type of the definition).
	data               jsonb       NOT NULL,
	version            bigint      NOT NULL DEFAULT 1,
	-- Set while a reply is awaited: when the attempt times out. It lives
	-- here, not in a timer, so it survives restarts.
	deadline           timestamptz,
	-- Set while backing off: when the next attempt is due.
	next_retry_at      timestamptz,
	step_started_at    timestamptz,
	last_error         text        NOT NULL DEFAULT '',
	correlation_id     text        NOT NULL DEFAULT '',
	created_at         timestamptz NOT NULL DEFAULT now(),
	updated_at         timestamptz NOT NULL DEFAULT now(),
	finished_at        timestamptz
);

-- The poller's two queries (deadline passed, retry due) each walk a partial
-- index that holds only the sagas waiting on a timer, so they stay cheap
-- however many finished sagas the table keeps.
CREATE INDEX sagas_deadline ON sagabox.sagas (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX sagas_next_retry ON sagabox.sagas (next_retry_at) WHERE next_retry_at IS NOT NULL;
-- Operators list failed and stuck sagas; the cleaner deletes finished ones
-- oldest first.
CREATE INDEX sagas_unfinished ON sagabox.sagas (updated_at) WHERE finished_at IS NULL OR status = 'failed';
CREATE INDEX sagas_finished ON sagabox.sagas (finished_at) WHERE finished_at IS NOT NULL AND status <> 'failed';

-- Step history: one row per attempt of a step or compensation.
CREATE TABLE sagabox.saga_steps (
	saga_id      uuid        NOT NULL REFERENCES sagabox.sagas (id) ON DELETE CASCADE,
	step         int         NOT NULL,
	compensation boolean     NOT NULL,
	attempt      int         NOT NULL,
	name         text        NOT NULL,
	started_at   timestamptz NOT NULL,
	finished_at  timestamptz,
	-- succeeded, rejected, error, timed_out, aborted; NULL while in flight.
	outcome      text,
	error        text        NOT NULL DEFAULT '',
	PRIMARY KEY (saga_id, step, compensation, attempt)
);

-- The inbox: what a consumer has processed, written in the same transaction
-- as the consumer's effect, so a redelivered message has no second effect.
--   Participants key it on saga/step/phase (the dtm "barrier"): a retried or
--   redelivered command finds the stored reply and gets it again; a
--   compensation finding no action records a cancelled action, so the
--   action arriving late does nothing.
--   Idempotent consumers key it on the message ID.
CREATE TABLE sagabox.saga_inbox (
	consumer     text        NOT NULL,
	key          text        NOT NULL,
	outcome      text        NOT NULL DEFAULT '',
	reason       text        NOT NULL DEFAULT '',
	payload_type text        NOT NULL DEFAULT '',
	payload      bytea,
	processed_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer, key)
);
CREATE INDEX saga_inbox_processed ON sagabox.saga_inbox (processed_at);
