-- The step history is written once per attempt, when the attempt ends (one
-- insert, not an insert when the command goes out and an update when the
-- reply comes back). The attempt in flight lives in the saga's own row:
-- step, compensation, attempt, step_started_at and, from here on, the
-- step's name, so that saga.Get can show it.
ALTER TABLE sagabox.sagas ADD COLUMN step_name text NOT NULL DEFAULT '';
