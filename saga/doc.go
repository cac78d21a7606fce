// Package saga runs business processes that span services as sagas: a
// sequence of local transactions, each in one service, with a compensating
// action for each that can be undone. The saga's state lives in Postgres; its
// commands and replies travel through the outbox (package outbox) and Kafka.
//
// # Orchestration, not choreography
//
// In a choreographed saga every service listens to the others' events and
// decides what to do next: there is no single place that knows the process,
// and "what happens to an order when the payment fails?" is answered by
// reading every service. In an orchestrated saga one component, the
// orchestrator, holds the process as an explicit definition and its state as
// a row: it sends a command to a participant, awaits the reply, and decides
// the next step. This package orchestrates: the definition is Go code you can
// read top to bottom, render as a diagram (Definition.Mermaid) and unit-test
// (package sagatest), and a saga's state can be queried and acted on by
// operators from any process (Admin).
//
// # Compensation, and the pivot
//
// Services do not share a transaction, so a saga cannot roll back. Instead
// each step that can be undone has a compensation: "release the reserved
// stock" for "reserve stock", "refund" for "debit". When a step fails, the
// orchestrator runs the compensations of the completed steps in reverse
// order. Steps come in three kinds, in this order:
//
//   - Compensatable steps can be undone (or have nothing to undo).
//   - The pivot is the point of no return: once it succeeds the saga only
//     goes forward. It is the step whose effect cannot be undone (charging
//     a card with no refunds), or simply the business decision to commit.
//   - Retriable steps follow the pivot and must eventually succeed: they are
//     retried, never compensated.
//
// A compensation learns why the saga compensates with FailureFrom(ctx): the
// step that failed, how (rejected, timed out, error, aborted) and the reason
// (the participant's words, "timed out after 3 attempts", the local step's
// error). CompensateLocal gets it in its context, and so does the
// PayloadContext builder of a Compensate invocation. The failure is stored
// in the saga's row, so every attempt of every compensation, on any
// orchestrator and after restarts, sees the same one; Info.Failure shows
// it to operators.
//
// A compensation can fail too. It is retried with backoff and, if it keeps
// failing, the saga ends StatusFailed: half done, listed by Admin.List for an
// operator, who can fix the cause and call Admin.Retry (or, with the
// definition's Go type, Orchestrator.Retry). A failed saga
// is never reported as compensated.
//
//	stateDiagram-v2
//	    [*] --> running: Start (in the caller's transaction)
//	    running --> running: step succeeded / retry after error or timeout / pivot or retriable step asked again
//	    running --> succeeded: last step succeeded
//	    running --> compensating: step rejected, or out of attempts
//	    running --> failed: pivot errors, a step past it fails, or UnknownOutcomeBudget spent
//	    failed --> running: a late definitive reply to the step it failed on
//	    compensating --> compensating: compensation succeeded / retried
//	    compensating --> compensated: first step undone
//	    compensating --> failed: a compensation out of attempts
//	    failed --> running: Retry (past the pivot)
//	    failed --> compensating: Retry (while compensating)
//	    succeeded --> [*]
//	    compensated --> [*]
//
// # When the outcome is unknown: the policy per step kind
//
// A reply that does not come says nothing: the participant may be down,
// slow, or done with a reply still on its way. What the orchestrator does
// then depends on what the step can afford. An attempt times out after
// Step.Timeout and is retried as Step.Retry says (MaxAttempts, exponential
// backoff from InitialBackoff capped at MaxBackoff); an error reply means
// "nothing was done, try again" and is retried the same way; a rejection
// is final. When the attempts are spent:
//
//   - A compensatable step that timed out or kept erroring is compensated,
//     with the steps before it: its compensation is sent even though the
//     action may never have run, and the participant's barrier makes that
//     compensation a no-op, and the late action too.
//   - A pivot cannot be compensated, and compensating the steps before it
//     could contradict a debit that did happen. Rejected, it compensates
//     the steps before it. Timed out, it is asked again: the command is
//     re-sent with the same capped backoff, for as long as the step's
//     UnknownOutcomeBudget (0, the default: until the participant answers
//     or an operator decides). The saga stays running, awaiting the pivot,
//     its attempts in the history (Admin.Get) and "outcome unknown" in its
//     last error; each re-ask counts in
//     sagabox_saga_unknown_outcome_retries_total, the metric to alert on. The participant's inbox answers a command it already ran
//     with the reply it stored, so asking again never debits twice. A pivot
//     that keeps answering errors ends failed for an operator.
//   - A retriable step (after the pivot) is never compensated: timed out it
//     is asked again like a pivot; rejected or erroring past its attempts it
//     ends failed.
//   - A compensation is retried up to CompensationRetry.MaxAttempts, a
//     rejection too, then the saga ends failed, never compensated.
//
// Replies are matched on step, phase (action or compensation) and attempt.
// Error replies count only for the attempt in flight. A definitive reply
// (succeeded or rejected) is what the participant's inbox answers every
// attempt of a step in that phase with, so for a pivot or retriable step
// the saga is still on (waiting, backing off, failed after its budget, or
// retried by an operator) it is applied whatever its attempt, once: the
// step moves on and later copies are duplicates. Any other definitive reply
// the saga cannot use, such as an action's success after the saga
// compensated past it or a debit after an operator aborted the saga, is
// never silently dropped: unless the history already has that step's
// outcome (a duplicate), it is recorded in the saga's history
// (saga_late_replies, Info.LateReplies) and counted in
// sagabox_saga_late_replies_total by what was done. An action that
// succeeded after the saga compensated past it gets its compensation sent
// (again; the inbox makes a second one a no-op), so no effect stays behind;
// a pivot has no compensation, so its late success is recorded, logged as
// an error, for an operator to reverse. An abort while a step backs off
// between attempts compensates that step too: the attempt that timed out
// may yet run.
//
// dtm, for comparison, has no pivot: every saga branch has a compensation.
// A branch answering neither success nor FAILURE is retried by dtm's cron
// with exponential backoff, by default indefinitely; a RetryLimit or a
// TimeoutToFail turns it into a rollback, and a rollback treats a branch
// that was started but never answered as done and compensates it, relying
// on the participant's barrier exactly as sagabox's compensatable steps do.
// Compensations are retried until they succeed. Temporal retries an
// Activity by default without limit (MaximumAttempts 0; 1 s backoff
// doubling, capped at 100 times that), each attempt bounded by its
// StartToClose timeout and the whole by an optional ScheduleToClose one; a
// result reported after the attempt timed out is rejected by the server,
// so, as here, only a later attempt's answer counts, and the Activity must
// be idempotent for that to be safe. Compensation in Temporal is workflow
// code the developer writes (a deferred list of undo activities): what to
// do with a step whose outcome is unknown is the developer's choice.
// sagabox takes dtm's "keep asking, the barrier makes it safe" for the
// steps that cannot be undone, Temporal's unlimited-by-default retries, and
// adds what neither gives by default: the pivot waits instead of rolling
// back, and a late answer is applied or recorded instead of being refused.
//
// # Why participants must be idempotent
//
// Kafka delivers at least once: a command can arrive twice (a relay retried
// it, a consumer crashed before committing its offset), and the orchestrator
// itself sends a command again when a reply does not come before the step's
// timeout. A command can also arrive late: after the orchestrator gave up
// waiting and sent the compensation. So each participant must make its
// effects idempotent, and that is what Participant does (the "barrier" of
// dtm): the business change, the reply and an inbox row keyed on (saga,
// step, action or compensation) commit in one transaction. A redelivered or
// retried command finds the row and gets the stored reply again, without a
// second effect; a compensation that finds no action records the action as
// cancelled and succeeds doing nothing; the action arriving after it then
// does nothing. Two deliveries racing each other both read no row, but the
// row's primary key lets only one commit: the other rolls back, effect
// included, and is retried, finding the row. Inbox gives any other event
// handler the same protection.
//
// # How it runs
//
//	sequenceDiagram
//	    participant API as order service (caller)
//	    participant DB as Postgres (sagas + outbox)
//	    participant K as Kafka
//	    participant C as catalog (Participant)
//	    API->>DB: BEGIN; insert order; Start: saga row + command; COMMIT
//	    DB-->>K: relay publishes reserve_stock
//	    K->>C: reserve_stock (saga, step 0, attempt 1)
//	    C->>C: BEGIN; read inbox; reserve; inbox row + reply in outbox; COMMIT
//	    C-->>K: relay publishes the reply
//	    K->>DB: Orchestrator: BEGIN; lock saga row; next state + next command; COMMIT
//
// Every state change locks the saga's row and bumps its version in the same
// transaction that writes the next command into the outbox, so two replies,
// or a reply and a timeout, cannot both apply, and several orchestrators can
// run at once. Replies carry the saga ID, the step, the phase and the
// attempt: a reply for an attempt the saga has left is ignored, or, if it
// tells the saga something new, applied or recorded (see above). Deadlines and retry times are columns, fired by a poller with
// FOR UPDATE SKIP LOCKED, so they survive restarts. Replies that cannot be
// decoded go to a dead-letter topic (through the outbox) with the reason;
// a registry outage is retried instead.
//
// # On the wire: payload records and saga headers
//
// A command or reply is its payload record itself (the Invocation's Type,
// or the handler's reply type; EmptyType, a record without fields that
// encodes to zero bytes, when there is none), in the Confluent wire format
// with a schema ID the relay registered under outbox.Subject(topic, name)
// like any other value. Any registry client (Kafka UI, kcat -s avro, a Java
// or Python consumer) decodes it into named fields. The saga metadata
// travels in Kafka headers beside the outbox's own (message_id,
// message_type, correlation_id, traceparent...):
//
//	header                 on                meaning                                          example
//	saga_id                commands, replies the saga's ID (outbox.HeaderSagaID)              0193f0c4-...-7c1e
//	message_type           commands, replies the value's schema (outbox.HeaderType)           sagabox.shop.ReserveStock
//	sagabox_saga_type      commands          the saga definition's name                       create_order
//	sagabox_step           commands, replies the step's index in the definition               1
//	sagabox_step_name      commands          the step's name                                  reserve_stock
//	sagabox_attempt        commands, replies the attempt, from 1 (0: a late compensation)     1
//	sagabox_compensation   commands, replies true for a compensation, false for an action     false
//	sagabox_command        commands          what to do, the handler's name                   reserve_stock
//	sagabox_reply_topic    commands          where the participant answers                    order.saga.replies
//	sagabox_outcome        replies           SUCCESS, REJECTED (final no) or ERROR (retry)    REJECTED
//	sagabox_reason         replies           why, when not SUCCESS (absent when empty)        insufficient stock
//
// The constants are HeaderSagaType, HeaderStep, HeaderStepName,
// HeaderAttempt, HeaderCompensation, HeaderCommand, HeaderReplyTopic,
// HeaderOutcome and HeaderReason. Consumers fetch the writer's schema by ID
// and resolve it against their own (outbox.Decoder), so producers and
// consumers of different schema versions interoperate as the BACKWARD rule
// allows.
//
// Older versions wrote an envelope instead (CommandType, ReplyType: the
// metadata as fields, the payload as Avro bytes inside). Participants and
// orchestrators still read it, told apart by message_type, so records in
// flight during an upgrade are handled; nothing writes it any more. Upgrade
// the consumers (participants and orchestrators) before the producers: an
// old consumer dead-letters a record in the header format as "not a saga
// envelope". A participant's inbox stores a reply's outcome, reason, payload
// type and payload, not its format: a duplicate command is answered in the
// header format whichever format its first delivery had.
//
// # Changing a saga: versions
//
// A saga may run for minutes or days, longer than a deployment. Its steps
// are code, so a saga started before a deployment must finish on the steps
// it started with: a new step inserted before the pivot, run on an old
// saga, would compensate something it never did. Each saga records its
// definition's version; an orchestrator is given every version still
// running (NewOrchestrator(rt, cfg, v1, v2)) and drives each saga with its
// own, starting new ones on the newest. A saga whose version the
// orchestrator does not have is never run on another version's steps: its
// reply is not applied (ErrUnknownVersion, logged, counted, written to its
// last_error) and its timers are left to an orchestrator that has it; its
// deadline stays, so that orchestrator re-sends the command and the
// participant's inbox answers with the stored reply. Temporal solves the
// same problem with workflow versioning (GetVersion) inside the code; dtm
// stores the whole branch list with each transaction.
//
// # Waiting for the outcome
//
// A client that starts a saga usually wants its outcome, not "pending",
// and should not poll the table for it. The transaction that finishes a
// saga also sends a Postgres NOTIFY on FinishedChannel with the saga's ID
// (only terminal transitions notify, so a saga costs one notification,
// delivered after its final state commits). A Waiter (NewWaiter, run by
// the client) holds one LISTEN connection per process and wakes the
// requests waiting on that saga: Waiter.Wait(ctx, id) returns the finished
// saga, or the saga so far when ctx ends. It works across instances, since
// the notification comes from whichever orchestrator finished the saga,
// and it looks again after reconnecting, since notifications sent while
// its connection was down are lost. The order service answers
// `Prefer: wait=N` with it.
//
// # What a saga costs
//
// Each step is a command and a reply through two outboxes and Kafka, and a
// transaction on each side. What makes that cheap is sharing: replies that
// arrive together (one per partition of the reply topic at a time) are
// applied in one transaction, in two round trips (the load rides with
// BEGIN, the writes with COMMIT), and a participant's commands likewise,
// each handler inside its own savepoint. More partitions let more of them
// share. Start writes the saga in the caller's transaction; Queue adds it to
// the caller's pgx.Batch instead, and with outbox.SendTx the business
// change, the saga and its first command commit in one round trip. The
// hot lookups go by primary key in every plan Postgres may settle on, also
// for tables that were empty when the service started. BENCHMARKS.md has
// the figures: about 1,100 three-step sagas a second on two cores, Postgres
// and the broker included.
//
// # Tracing: one trace per saga
//
// A saga crosses services and waits in tables, so its trace context has
// to travel with it explicitly (W3C traceparent and tracestate, the
// OpenTelemetry API). Start stores the trace context of its ctx with the
// saga's row and with its first command. A participant handles each
// command under a "process <topic>" span, a child of the record's
// traceparent header; the handler's ctx carries it, and so does the reply,
// even when one transaction answers a batch of commands of different
// sagas (outbox.Message.SpanContext). The orchestrator handles each reply
// the same way, and the commands it sends carry that span's context. A
// timer has no record: a deadline that expires, a retry that comes due or
// an operator's request runs under a "saga timer <type>" span, a child of
// the trace context stored with the saga, however late. Consumers
// (NewConsumer) start their span from the event's header too. With the
// outbox's "outbox write" and "publish <topic>" spans between them, an
// order is one trace from its HTTP request to its last compensation.
//
// Spans carry sagabox.saga.id, .type, .step, .step_index, .attempt,
// .compensation, .outcome and .command, next to the messaging semantic
// conventions. TracerProvider in Config, ParticipantConfig and
// ConsumerConfig (or the Runtime's, see TracerProviderRuntime) chooses the
// provider; the default is the global one. A record without a trace
// context starts no span, so tracing off costs nothing.
package saga
