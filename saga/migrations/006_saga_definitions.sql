-- The definitions the orchestrators of this database run: each saga type
-- and version with its steps (name, kind, what it invokes, what undoes it)
-- as JSON (saga.DefinitionInfo). An operator process (the console, the
-- sagabox CLI) has no definition's Go type, yet it draws a saga's diagram
-- and refuses an Abort past the pivot from this table. An orchestrator
-- writes its definitions once when it starts (Orchestrator.RunTimers):
-- nothing on the path of a saga touches this table. A definition whose
-- steps change without a new version overwrites the row.
CREATE TABLE sagabox.saga_definitions (
	saga_type     text        NOT NULL,
	version       int         NOT NULL,
	steps         jsonb       NOT NULL,
	registered_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (saga_type, version)
);
