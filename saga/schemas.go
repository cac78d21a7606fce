package saga

import (
	"fmt"
	"go.opentelemetry.io/otel/trace"
	"strconv"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/sagabox/sagabox/internal/avrobin"
	"github.com/sagabox/sagabox/outbox"
)

// Avro full names of the saga envelopes.
const (
	CommandType    = "sagabox.saga.Command"
	ReplyType      = "sagabox.saga.Reply"
	DeadLetterType = "sagabox.saga.DeadLetter"
	// EmptyType is the value of a command or reply without a payload.
	EmptyType = "sagabox.saga.Empty"
)

// Kafka headers of saga commands and replies. The record's value is the
// payload itself (its schema named by the message_type header, EmptyType for
// none); the saga metadata travels in these headers, beside outbox.HeaderSagaID.
// See the package documentation for the table.
const (
	HeaderSagaType     = "sagabox_saga_type"
	HeaderStep         = "sagabox_step"
	HeaderStepName     = "sagabox_step_name"
	HeaderAttempt      = "sagabox_attempt"
	HeaderCompensation = "sagabox_compensation"
	HeaderCommand      = "sagabox_command"
	HeaderReplyTopic   = "sagabox_reply_topic"
	HeaderOutcome      = "sagabox_outcome"
	HeaderReason       = "sagabox_reason"
)

// The envelopes, the wire format before saga metadata moved to headers: they
// are still read, so that records in flight during an upgrade are handled,
// and never written. A command or reply carries the saga ID, the step and the
// attempt, so a late or duplicate reply can be recognised and ignored. The
// payload is the Avro binary of a schema both sides know (payload_type).
const commandSchema = `{
  "type": "record", "name": "Command", "namespace": "sagabox.saga",
  "doc": "A saga orchestrator asks a participant to run (or compensate) one step.",
  "fields": [
    {"name": "saga_id", "type": "string"},
    {"name": "saga_type", "type": "string"},
    {"name": "step", "type": "int", "doc": "index of the step in the definition"},
    {"name": "step_name", "type": "string"},
    {"name": "attempt", "type": "int", "doc": "1 for the first attempt; the reply echoes it"},
    {"name": "compensation", "type": "boolean"},
    {"name": "command", "type": "string", "doc": "what to do, such as reserve_stock"},
    {"name": "reply_topic", "type": "string"},
    {"name": "payload_type", "type": "string", "default": ""},
    {"name": "payload", "type": "bytes", "default": ""}
  ]
}`

const replySchema = `{
  "type": "record", "name": "Reply", "namespace": "sagabox.saga",
  "doc": "A participant answers one attempt of a saga step.",
  "fields": [
    {"name": "saga_id", "type": "string"},
    {"name": "step", "type": "int"},
    {"name": "attempt", "type": "int"},
    {"name": "compensation", "type": "boolean"},
    {"name": "outcome", "type": {"type": "enum", "name": "Outcome", "symbols": ["SUCCESS", "REJECTED", "ERROR"]},
     "doc": "SUCCESS: done. REJECTED: a business no, final. ERROR: transient, nothing done, retry later."},
    {"name": "reason", "type": "string", "default": ""},
    {"name": "payload_type", "type": "string", "default": ""},
    {"name": "payload", "type": "bytes", "default": ""}
  ]
}`

const deadLetterSchema = `{
  "type": "record", "name": "DeadLetter", "namespace": "sagabox.saga",
  "doc": "A record a saga consumer could not decode, parked with the reason.",
  "fields": [
    {"name": "topic", "type": "string"},
    {"name": "partition", "type": "int"},
    {"name": "offset", "type": "long"},
    {"name": "key", "type": "string"},
    {"name": "reason", "type": "string"},
    {"name": "value", "type": "bytes"},
    {"name": "headers", "type": {"type": "map", "values": "string"}}
  ]
}`

const emptySchema = `{
  "type": "record", "name": "Empty", "namespace": "sagabox.saga",
  "doc": "The value of a saga command or reply that carries no payload: zero bytes of Avro binary. The saga metadata is in the record's headers.",
  "fields": []
}`

// Schemas returns the Avro definitions of the saga records (Empty, the
// dead letter, and the envelopes older versions wrote). Add them to
// the outbox.Codec of every orchestrator and participant:
//
//	codec, err := outbox.NewCodec(append(saga.Schemas(), myPayloadSchemas...)...)
func Schemas() []string { return []string{commandSchema, replySchema, deadLetterSchema, emptySchema} }

// The reply envelope's outcome symbols on the wire (and in the inbox).
const (
	wireSuccess  = "SUCCESS"
	wireRejected = "REJECTED"
	wireError    = "ERROR"
)

// outcomeFromWire is the reply envelope's outcome as an Outcome; an unknown
// symbol is an error reply.
func outcomeFromWire(s string) Outcome {
	switch s {
	case wireSuccess:
		return OutcomeSucceeded
	case wireRejected:
		return OutcomeRejected
	}
	return OutcomeError
}

type commandEnvelope struct {
	SagaID       string `avro:"saga_id"`
	SagaType     string `avro:"saga_type"`
	Step         int    `avro:"step"`
	StepName     string `avro:"step_name"`
	Attempt      int    `avro:"attempt"`
	Compensation bool   `avro:"compensation"`
	Command      string `avro:"command"`
	ReplyTopic   string `avro:"reply_topic"`
	PayloadType  string `avro:"payload_type"`
	Payload      []byte `avro:"payload"`
}

type replyEnvelope struct {
	SagaID       string `avro:"saga_id"`
	Step         int    `avro:"step"`
	Attempt      int    `avro:"attempt"`
	Compensation bool   `avro:"compensation"`
	Outcome      string `avro:"outcome"`
	Reason       string `avro:"reason"`
	PayloadType  string `avro:"payload_type"`
	Payload      []byte `avro:"payload"`
	// encoded: Payload was encoded by the codec just now (the handler's
	// reply), not read back from the inbox. Not on the wire.
	encoded bool
}

type deadLetter struct {
	Topic     string            `avro:"topic"`
	Partition int               `avro:"partition"`
	Offset    int64             `avro:"offset"`
	Key       string            `avro:"key"`
	Reason    string            `avro:"reason"`
	Value     []byte            `avro:"value"`
	Headers   map[string]string `avro:"headers"`
}

// commandMessage is the outbox message of a command: the payload record
// itself as the value (Empty for none), already Avro binary, and the saga
// metadata in headers.
func commandMessage(topic string, env *commandEnvelope) outbox.Message {
	typ, value := env.PayloadType, env.Payload
	if typ == "" {
		typ, value = EmptyType, []byte{}
	}
	// The payload was encoded by the machine with the runtime's codec a
	// moment ago (machine.command): the writer need not check it again.
	return outbox.Message{Topic: topic, Key: env.SagaID, Type: typ, Value: avrobin.Encoded(value), SagaID: env.SagaID,
		Headers: map[string]string{
			HeaderSagaType: env.SagaType, HeaderStep: strconv.Itoa(env.Step), HeaderStepName: env.StepName,
			HeaderAttempt: strconv.Itoa(env.Attempt), HeaderCompensation: strconv.FormatBool(env.Compensation),
			HeaderCommand: env.Command, HeaderReplyTopic: env.ReplyTopic,
		}}
}

// replyRecord is the outbox message of a reply, like commandMessage.
func replyRecord(topic string, r *replyEnvelope) outbox.Message {
	typ, value := r.PayloadType, r.Payload
	if typ == "" {
		typ, value = EmptyType, []byte{}
	}
	h := map[string]string{
		HeaderStep: strconv.Itoa(r.Step), HeaderAttempt: strconv.Itoa(r.Attempt),
		HeaderCompensation: strconv.FormatBool(r.Compensation), HeaderOutcome: r.Outcome,
	}
	if r.Reason != "" {
		h[HeaderReason] = r.Reason
	}
	// A reply its handler just returned was encoded by the codec (and Empty
	// is zero bytes); one replayed from the inbox was stored earlier, maybe
	// under another version of its schema, so the writer checks it.
	var v any = outbox.RawValue(value)
	if r.encoded || r.PayloadType == "" {
		v = avrobin.Encoded(value)
	}
	return outbox.Message{Topic: topic, Key: r.SagaID, Type: typ, Value: v, SagaID: r.SagaID, Headers: h}
}

// Reply is a participant's answer to one attempt of a step, as the
// orchestrator sees it.
type Reply struct {
	SagaID       uuid.UUID
	Step         int
	Attempt      int
	Compensation bool
	Outcome      Outcome
	Reason       string
	// PayloadType is the Avro full name of Payload's schema ("" for none).
	PayloadType string
	// Payload is Avro binary; read it with Decode.
	Payload []byte

	codec   *outbox.Codec
	framed  []byte // the consumed value in the header format (see Command)
	decoder *outbox.Decoder
	trace   trace.SpanContext // the record's, for the process span
}

// Decode decodes the reply's payload into v (a pointer to a struct with avro
// tags) with the schema named PayloadType, which the orchestrator's codec
// must know; a consumed reply with its writer's schema resolved against the
// codec's, as Command.Decode does.
func (r *Reply) Decode(v any) error {
	if r.framed != nil && r.decoder != nil {
		return decodeFramed(r.decoder, r.PayloadType, r.framed, v)
	}
	return decodePayload(r.codec, r.PayloadType, r.Payload, v)
}

func decodePayload(c *outbox.Codec, typ string, payload []byte, v any) error {
	if typ == "" {
		return fmt.Errorf("saga: the message has no payload")
	}
	if c == nil {
		return fmt.Errorf("saga: no codec to decode %s", typ)
	}
	s, ok := c.Schema(typ)
	if !ok {
		return fmt.Errorf("saga: payload type %q: add its schema to the codec", typ)
	}
	if err := avro.Unmarshal(s.Avro, payload, v); err != nil {
		return fmt.Errorf("saga: decode %s payload: %w", typ, err)
	}
	return nil
}

// encodePayload encodes v with the schema typ ("" and nil for no payload).
func encodePayload(c *outbox.Codec, typ string, v any) ([]byte, error) {
	if typ == "" {
		return nil, nil
	}
	_, b, err := c.Encode(typ, v)
	return b, err
}

// checkCodec reports a codec that lacks the envelope schemas.
func checkCodec(c *outbox.Codec, field string) error {
	if c == nil {
		return fmt.Errorf("%w: %s is required: outbox.NewCodec(append(saga.Schemas(), yourSchemas...)...)", ErrInvalidConfig, field)
	}
	for _, n := range []string{CommandType, ReplyType, DeadLetterType, EmptyType} {
		if _, ok := c.Schema(n); !ok {
			return fmt.Errorf("%w: %s does not know %s: build it with outbox.NewCodec(append(saga.Schemas(), ...)...)", ErrInvalidConfig, field, n)
		}
	}
	return nil
}
