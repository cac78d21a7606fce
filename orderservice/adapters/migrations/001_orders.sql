-- Orders. The saga that drives an order has the order's ID (saga.Start with
-- StartOptions.ID), so GET /orders/{id} finds it in sagabox.sagas without a
-- column of its own.
--
-- id is a UUIDv7: its first bits are the creation time, so ORDER BY id is
-- creation order and the listing of a user's orders pages by id alone.
CREATE TABLE orders (
	id                  uuid        PRIMARY KEY,
	user_id             uuid        NOT NULL,
	-- The lines as the customer asked for them (merged by SKU), with the unit
	-- prices: first the catalog's list prices, then the prices the stock was
	-- reserved at. Always read and written whole: jsonb, not a table.
	items               jsonb       NOT NULL,
	total_cents         bigint      NOT NULL DEFAULT 0 CHECK (total_cents >= 0),
	status              text        NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'CANCELLED')),
	reason              text        NOT NULL DEFAULT '',
	-- The client's Idempotency-Key, and a hash of what the request asked for
	-- (domain.RequestFingerprint), so that a retry gets this order back and a
	-- different request under the same key is refused.
	idempotency_key     text,
	request_fingerprint text        NOT NULL,
	created_at          timestamptz NOT NULL,
	updated_at          timestamptz NOT NULL
);

-- One order per (user, key). Two concurrent requests with the same key: the
-- second INSERT waits on this index until the first commits, then finds its
-- row (ON CONFLICT DO NOTHING) and answers with that order.
CREATE UNIQUE INDEX orders_idempotency_key ON orders (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- GET /orders: a user's orders, newest first, by keyset (id < $before).
CREATE INDEX orders_user_id ON orders (user_id, id DESC);
