-- The outbox: messages written inside business transactions, waiting for the
-- relay to publish them to Kafka.
--
-- Why the columns look the way they do:
--   id          commit order per key. Writers take a per-key advisory lock
--               before the id is drawn (see writer.go), so for one key a
--               higher id always means a later commit. The relay never keeps
--               a "last id seen" high-water mark: a row that commits late
--               with a low id is simply still pending and is found by the
--               next poll (no sequence-gap loss, no xmin horizon to wait on).
--   message_id  the stable ID a consumer deduplicates on; it travels as a
--               Kafka header and never changes across redeliveries.
--   shard       hash of the key; relays split the shards between them with
--               leases, so each key has exactly one publisher at a time.
--   value       Avro binary (bytea, never json). The Confluent header (magic
--               byte and schema ID) is added by the relay, which resolves the
--               ID in the Schema Registry: a registry outage delays
--               publishing but never fails a business transaction.
--
-- The table holds only what is still to do: pending and parked messages. The
-- relay deletes a row once Kafka has it (moving it to outbox_archive when a
-- retention is configured). That keeps the hot table and its indexes as
-- small as the backlog, lets the relay walk the primary key in id order, and
-- makes "mark published" a cheap DELETE: an UPDATE of an indexed state
-- column can never be HOT and costs several times more (BENCHMARKS.md).
CREATE TABLE sagabox.outbox (
	id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	message_id      uuid        NOT NULL,
	shard           smallint    NOT NULL,
	topic           text        NOT NULL,
	key             text        NOT NULL DEFAULT '',
	value           bytea       NOT NULL,
	schema_fp       bytea       NOT NULL,
	message_type    text        NOT NULL,
	correlation_id  text        NOT NULL DEFAULT '',
	causation_id    text        NOT NULL DEFAULT '',
	saga_id         text        NOT NULL DEFAULT '',
	traceparent     text        NOT NULL DEFAULT '',
	tracestate      text        NOT NULL DEFAULT '',
	headers         jsonb       NOT NULL DEFAULT '{}',
	created_at      timestamptz NOT NULL DEFAULT now(),
	attempts        int         NOT NULL DEFAULT 0,
	-- NULL until a publish attempt failed; while in the future, this row and
	-- every later row of its key wait (per-key order survives retries).
	next_attempt_at timestamptz,
	last_error      text,
	parked_at       timestamptz
);

-- A message ID is unique: writing the same message twice is refused.
CREATE UNIQUE INDEX outbox_message_id ON sagabox.outbox (message_id);

-- Keys held back by a failed attempt. Tiny in normal operation, and rows
-- that never failed are not in it, so writers do not pay for it.
CREATE INDEX outbox_backoff ON sagabox.outbox (topic, key, id)
	WHERE next_attempt_at IS NOT NULL AND parked_at IS NULL;

-- Operators list parked messages.
CREATE INDEX outbox_parked ON sagabox.outbox (parked_at)
	WHERE parked_at IS NOT NULL;

-- Published messages, kept for RelayConfig.Retention when it is set (for
-- audits and replays); the relay holding shard 0 deletes them in small
-- batches once they are older.
CREATE TABLE sagabox.outbox_archive (
	id             bigint      PRIMARY KEY,
	message_id     uuid        NOT NULL,
	topic          text        NOT NULL,
	key            text        NOT NULL,
	value          bytea       NOT NULL,
	schema_fp      bytea       NOT NULL,
	message_type   text        NOT NULL,
	correlation_id text        NOT NULL,
	causation_id   text        NOT NULL,
	saga_id        text        NOT NULL,
	traceparent    text        NOT NULL,
	headers        jsonb       NOT NULL,
	created_at     timestamptz NOT NULL,
	attempts       int         NOT NULL,
	published_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_archive_published ON sagabox.outbox_archive (published_at);

-- Schemas the writers encoded with, by fingerprint, so that any relay (also
-- one running an older build during a rolling deploy) can register them in
-- the Schema Registry and frame the values.
CREATE TABLE sagabox.outbox_schemas (
	fingerprint bytea       PRIMARY KEY,
	name        text        NOT NULL,
	definition  text        NOT NULL,
	created_at  timestamptz NOT NULL DEFAULT now()
);

-- Relays alive right now. Each relay heartbeats here; the live set, sorted,
-- decides which shards each one should own.
CREATE TABLE sagabox.outbox_relays (
	relay_id     text        PRIMARY KEY,
	heartbeat_at timestamptz NOT NULL
);

-- One lease per shard. A relay publishes a shard's rows only while it holds
-- the lease; a dead relay's leases expire and another relay takes them.
-- epoch grows each time a shard changes hands.
CREATE TABLE sagabox.outbox_leases (
	shard      smallint    PRIMARY KEY,
	owner      text,
	expires_at timestamptz NOT NULL DEFAULT '-infinity',
	epoch      bigint      NOT NULL DEFAULT 0
);
INSERT INTO sagabox.outbox_leases (shard) SELECT generate_series(0, 31);
