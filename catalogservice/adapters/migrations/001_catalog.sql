-- Products. stock can never go negative: the conditional UPDATE in
-- Stock.Take is what prevents overselling, this CHECK is the guard rail if a
-- future query forgets the condition.
CREATE TABLE products (
	sku         text        PRIMARY KEY,
	name        text        NOT NULL,
	price_cents bigint      NOT NULL CHECK (price_cents > 0),
	stock       int         NOT NULL CHECK (stock >= 0),
	created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per order that ever asked for or gave back stock: the participant
-- barrier (see domain.ReservationStatus). lines holds exactly what was taken,
-- with the prices charged, so a release gives back exactly that. 'NEW' only
-- exists inside the transaction that claims the row.
CREATE TABLE stock_reservations (
	order_id   text        PRIMARY KEY,
	status     text        NOT NULL CHECK (status IN ('NEW', 'RESERVED', 'REJECTED', 'RELEASED', 'VOIDED')),
	lines      jsonb       NOT NULL DEFAULT '[]',
	reason     text        NOT NULL DEFAULT '',
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);

-- The catalog's read model of orders (CQRS), fed by order.events. items is
-- denormalized JSON with the product names as they were when the order was
-- created: a read model is shaped for its one query.
CREATE TABLE order_views (
	order_id    text        PRIMARY KEY,
	user_id     text        NOT NULL DEFAULT '',
	items       jsonb       NOT NULL DEFAULT '[]',
	total_cents bigint      NOT NULL DEFAULT 0,
	status      text        NOT NULL DEFAULT '',
	reason      text        NOT NULL DEFAULT '',
	updated_at  timestamptz NOT NULL DEFAULT now()
);
