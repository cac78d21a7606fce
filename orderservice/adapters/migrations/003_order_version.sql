-- version counts the events written for the order (OrderCreated is 1,
-- OrderApproved or OrderCancelled 2), and the API shows it: a client that
-- read version V asks the catalog's read model for at least V
-- (GET /catalog/orders/{id}?min_version=V), so it never reads an older state
-- than one it has already seen. Older orders get the count they had.
ALTER TABLE orders ADD COLUMN version integer NOT NULL DEFAULT 1;
UPDATE orders SET version = 2 WHERE status <> 'PENDING';
