-- Operator requests (saga.Admin). An operator process (the console, the
-- sagabox CLI) does not have the definition's Go type, so it cannot run the
-- machine that builds a retry's or an abort's commands. It records the
-- request here, in the same transaction that checks the saga's state, and
-- sets next_retry_at to now: the orchestrator's timer poll, which already
-- walks sagas_next_retry, picks the saga up and carries the request out with
-- its machine. A request survives restarts like any timer. NULL: none.
-- No index: the poll finds requests through sagas_next_retry.
ALTER TABLE sagabox.sagas ADD COLUMN admin_request jsonb;
-- What operators did to the saga (saga.Action as a JSON array: requested,
-- done or refused, with who, why and when), shown by saga.Admin.Get. NULL
-- for a saga no operator touched.
ALTER TABLE sagabox.sagas ADD COLUMN admin_log jsonb;
