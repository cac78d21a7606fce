-- Late replies: answers a saga received for an attempt it had stopped
-- waiting for (it timed out, the saga was aborted, compensated, or an
-- operator retried it). A participant answers every attempt of a step from
-- its inbox, so such a reply is not noise: "the debit happened" may arrive
-- after the saga gave up on the debit. Dropping it would leave the effect
-- behind with no trace. Each reply that told the saga something it did not
-- know (its step has no succeeded or rejected attempt in saga_steps) gets a
-- row here, in the transaction that handled it, with what the orchestrator
-- did about it:
--   applied      the saga still waited on that step (a pivot or retriable
--                step whose outcome was unknown, also after it failed or
--                was retried by an operator) and used the reply;
--   compensated  an action succeeded after the saga had compensated past
--                it: its compensation was sent (again; the participant's
--                inbox makes a second one a no-op), so no effect stays;
--   recorded     nothing the saga can do (a pivot has no compensation, a
--                compensation answered after the saga moved on): kept for
--                an operator, and counted in
--                sagabox_saga_late_replies_total{disposition="recorded"}.
-- Plain duplicates of a reply the saga used are not recorded: they are
-- counted in sagabox_saga_replies_ignored_total only. The rows go with
-- their saga (ON DELETE CASCADE) when Cleanup deletes it.
CREATE TABLE sagabox.saga_late_replies (
	saga_id      uuid        NOT NULL REFERENCES sagabox.sagas (id) ON DELETE CASCADE,
	n            bigint      GENERATED ALWAYS AS IDENTITY,
	step         int         NOT NULL,
	compensation boolean     NOT NULL,
	attempt      int         NOT NULL,
	name         text        NOT NULL,
	-- succeeded or rejected (error replies say nothing was done: never late news).
	outcome      text        NOT NULL,
	reason       text        NOT NULL DEFAULT '',
	disposition  text        NOT NULL CHECK (disposition IN ('applied', 'compensated', 'recorded')),
	-- Why, in words, for the operator console.
	note         text        NOT NULL DEFAULT '',
	received_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (saga_id, n)
);
