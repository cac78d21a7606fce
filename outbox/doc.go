// Package outbox publishes events to Kafka reliably from Postgres
// transactions: the transactional outbox pattern.
//
// # Why
//
// A service that changes its database and then publishes an event makes two
// writes to two systems, and no transaction spans both ("dual write"). If it
// crashes between them, or Kafka is down, the order is saved and the
// OrderCreated event is lost; publish first, and a rolled-back order has an
// event anyway. Retrying does not fix it: the process that would retry is
// the one that crashed.
//
// The outbox makes the event part of the business transaction. Writer.Write
// inserts the message into the sagabox.outbox table in the caller's own
// transaction, so the message exists if and only if the business change
// committed. A separate Relay then reads committed messages and publishes
// them to Kafka, retrying until Kafka has them.
//
//	sequenceDiagram
//	    participant S as Service
//	    participant PG as Postgres
//	    participant R as Relay
//	    participant K as Kafka
//	    S->>PG: BEGIN; INSERT order; INSERT outbox row; COMMIT
//	    R->>PG: SELECT pending rows of my shards ORDER BY id
//	    R->>K: one produce request per batch (idempotent producer)
//	    K-->>R: acknowledged
//	    R->>PG: DELETE the published rows (or move them to the archive)
//
// A message row moves through these states:
//
//	stateDiagram-v2
//	    [*] --> pending: transaction commits
//	    pending --> published: Kafka acknowledged
//	    pending --> backing_off: publish failed
//	    backing_off --> pending: backoff elapsed
//	    backing_off --> parked: MaxAttempts, or a failure no retry fixes
//	    parked --> pending: Admin.Retry
//	    parked --> [*]: Admin.Discard
//	    published --> [*]: deleted (archived for RelayConfig.ArchiveFor when set)
//
// # What the relay guarantees
//
//   - Nothing committed is lost. The relay keeps no "last id published"
//     high-water mark, so a transaction that drew a low id and committed
//     late is still pending and still found. It does not wait on the
//     transaction horizon either, so a long report query elsewhere in the
//     database does not stall it.
//   - Per-key order. Writers take a per-key advisory lock before drawing
//     the row id, so for one key id order is commit order. Each key hashes
//     onto one of NumShards shards; each shard has one relay at a time
//     (a lease in Postgres). A key's messages of one batch travel in one
//     Kafka record batch, appended whole or not at all, and when a message
//     fails, the later messages of its key wait for it.
//   - Fenced leases. A relay paused past LeaseTTL (a long GC, a frozen VM)
//     wakes up believing it still owns its shards. Each shard's lease has
//     an epoch that grows when the shard changes hands; the statements
//     that fetch and mark a batch carry the (shard, epoch) pairs the relay
//     took and touch no row of a shard whose lease moved on. Kafka cannot
//     check a Postgres lease, so right before producing the relay also
//     checks its own lease deadline (measured from before the renewal, so
//     it errs early) and drops a batch fetched before a pause: it stays
//     pending for the new owner. Dropped and unmarked rows are counted in
//     sagabox_outbox_fenced_messages_total.
//   - At-least-once, not exactly-once. If a relay dies after Kafka
//     acknowledged a batch and before it marked the rows, the next relay
//     publishes that batch again. Kafka's idempotent producer removes the
//     duplicates of its own retries, but not these: every message carries a
//     stable ID (the HeaderID header) and consumers must deduplicate on it,
//     in the same transaction as their own change (see package saga's
//     inbox).
//   - Poison messages are parked, not retried for ever: after MaxAttempts
//     failures, or at once when no retry can help (a record larger than the
//     topic accepts), with the last error. Admin lists, retries and discards
//     them.
//
// # Avro and the Schema Registry
//
// Values are Avro. The Writer encodes them with a local Codec, so a value
// that does not fit its schema is refused inside the business transaction,
// with the field named, and a Schema Registry outage never fails a business
// transaction. The Relay registers each schema once (under the subject
// "<topic>-<record full name>", after checking BACKWARD compatibility with
// hamba/avro), caches the ID and frames the values in the Confluent wire
// format (magic byte 0, 4-byte schema ID, Avro binary), which any Confluent
// compatible client decodes. While the registry is unreachable, messages
// wait without spending their attempts.
//
// # Waking the relay
//
// Pass Relay.Notify as WriterConfig.Notify and a relay in the same process
// polls right after each write (and briefly keeps polling until the commit
// shows). Relays in other processes poll every PollInterval, or listen for
// NOTIFY when WriterConfig.NotifyChannel is set; that costs every writing
// transaction a global lock at commit, see BENCHMARKS.md.
//
// # Trace context
//
// A trace does not survive a table unless it is stored with the row. Write
// and Queue store the W3C trace context of ctx's span (or of each
// Message.SpanContext) in the row, under an "outbox write" span when
// tracing records; the relay publishes a traced row under a "publish
// <topic>" span, its child, and the record's traceparent and tracestate
// headers carry the publish span. WriterConfig.TracerProvider and
// RelayConfig.TracerProvider default to the global provider. An untraced
// write starts no span and allocates nothing for tracing.
package outbox
