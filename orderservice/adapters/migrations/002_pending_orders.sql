-- A customer's PENDING orders are counted on every new order (the cap of
-- app.Options.MaxPendingOrders); this index holds only those rows, so the
-- count stays small whatever the customer's history.
CREATE INDEX orders_pending ON orders (user_id) WHERE status = 'PENDING';
