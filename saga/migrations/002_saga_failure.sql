-- The failure that made a saga compensate (saga.Failure as JSON: the step,
-- its outcome and the reason), handed to the compensations through
-- saga.FailureFrom. NULL while the saga has not compensated, and for sagas
-- that started compensating before this column existed.
ALTER TABLE sagabox.sagas ADD COLUMN failure jsonb;
