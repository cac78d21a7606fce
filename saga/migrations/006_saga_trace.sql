-- The W3C trace context (traceparent, tracestate) of the work that started
-- each saga: the HTTP request of an order, for instance. Commands and
-- replies carry their trace context in Kafka headers, but a timer has no
-- record to read it from: a deadline that expires, a retry that comes due
-- or an operator's request hours later reads it here, and its span joins
-- the saga's trace instead of starting a trace of its own. NULL for sagas
-- started without a trace (or before this migration). Only the timer poll
-- reads these columns; nothing indexes them.
ALTER TABLE sagabox.sagas ADD COLUMN traceparent text, ADD COLUMN tracestate text;
