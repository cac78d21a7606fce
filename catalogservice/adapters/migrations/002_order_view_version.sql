-- version counts the order events the view has applied (the inbox makes
-- each count once). orderservice counts the events it writes for an order
-- the same way and shows that as the order's version, so a client that saw
-- version V can ask GET /catalog/orders/{id}?min_version=V&wait=N and never
-- read an older state of the order than one it has seen. Older rows get the
-- count they must have had: OrderCreated (the items), then a final status.
ALTER TABLE order_views ADD COLUMN version integer NOT NULL DEFAULT 0;
UPDATE order_views SET version =
	(CASE WHEN items <> '[]'::jsonb THEN 1 ELSE 0 END) +
	(CASE WHEN status IN ('APPROVED', 'CANCELLED') THEN 1 ELSE 0 END);
