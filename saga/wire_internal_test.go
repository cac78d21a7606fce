package saga

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox/internal/avrobin"
	"github.com/sagabox/sagabox/outbox"
)

// The writer's version of a payload; the reader (the codec) has a newer one
// with a field added with a default, as a participant upgraded first has.
const (
	wireItemV1 = `{"type": "record", "name": "Reserve", "namespace": "test.wire",
  "fields": [{"name": "item", "type": "string"}, {"name": "qty", "type": "int"}]}`
	wireItemV2 = `{"type": "record", "name": "Reserve", "namespace": "test.wire",
  "fields": [{"name": "item", "type": "string"}, {"name": "qty", "type": "int"},
    {"name": "note", "type": "string", "default": "none"}]}`
	wireReserved = `{"type": "record", "name": "Reserved", "namespace": "test.wire",
  "fields": [{"name": "hold", "type": "string"}]}`
)

type wireReserve struct {
	Item string `avro:"item"`
	Qty  int    `avro:"qty"`
	Note string `avro:"note"`
}

type wireKit struct {
	t       *testing.T
	reg     srclient.ISchemaRegistryClient
	codec   *outbox.Codec
	decoder *outbox.Decoder
}

func newWireKit(t *testing.T) *wireKit {
	fake := srfake.New()
	t.Cleanup(fake.Close)
	reg := srclient.NewSchemaRegistryClient(fake.URL())
	codec, err := outbox.NewCodec(append(Schemas(), wireItemV2, wireReserved)...)
	if err != nil {
		t.Fatal(err)
	}
	return &wireKit{t: t, reg: reg, codec: codec, decoder: outbox.NewDecoder(reg, codec)}
}

// record is what the relay publishes for m, as the consumer sees it: the
// value framed with the ID its schema got under Subject(topic, name) (the
// writer's definition def), every header as metadata.
func (k *wireKit) record(m outbox.Message, def string, value []byte) *message.Message {
	k.t.Helper()
	s, err := k.reg.CreateSchema(outbox.Subject(m.Topic, m.Type), def, srclient.Avro)
	if err != nil {
		k.t.Fatal(err)
	}
	framed := make([]byte, 5+len(value))
	binary.BigEndian.PutUint32(framed[1:5], uint32(s.ID()))
	copy(framed[5:], value)
	msg := message.NewMessage(uuid.NewString(), framed)
	for h, v := range m.Headers {
		msg.Metadata.Set(h, v)
	}
	msg.Metadata.Set(outbox.HeaderType, m.Type)
	msg.Metadata.Set(outbox.HeaderSagaID, m.SagaID)
	return msg
}

func TestCommandsAndRepliesOnTheWire(t *testing.T) {
	t.Parallel()
	k := newWireKit(t)
	p := &Participant{decoder: k.decoder, codec: k.codec}
	o := &Orchestrator[struct{}]{decoder: k.decoder, codec: k.codec}
	sagaID := uuid.New()
	v1, err := avro.Parse(wireItemV1)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := avro.Marshal(v1, map[string]any{"item": "book", "qty": 2})
	if err != nil {
		t.Fatal(err)
	}
	env := commandEnvelope{SagaID: sagaID.String(), SagaType: "order", Step: 1, StepName: "reserve", Attempt: 3,
		Compensation: false, Command: "reserve_stock", ReplyTopic: "replies", PayloadType: "test.wire.Reserve", Payload: payload}

	check := func(what string, cmd *Command) {
		t.Helper()
		if cmd.SagaID != sagaID || cmd.SagaType != "order" || cmd.Step != 1 || cmd.StepName != "reserve" || cmd.Attempt != 3 ||
			cmd.Compensation || cmd.Name != "reserve_stock" || cmd.ReplyTopic != "replies" || cmd.PayloadType != "test.wire.Reserve" {
			t.Fatalf("%s: decoded %+v", what, cmd)
		}
		cmd.codec = k.codec
		var got wireReserve
		if err := cmd.Decode(&got); err != nil {
			t.Fatalf("%s: payload: %v", what, err)
		}
		if got.Item != "book" || got.Qty != 2 {
			t.Fatalf("%s: payload %+v", what, got)
		}
	}

	// The header format: the value is the payload record, written with the
	// older schema; Decode resolves it against the reader's, the default
	// filling the new field.
	m := commandMessage("catalog.commands", &env)
	if m.Type != "test.wire.Reserve" || m.Headers[HeaderStep] != "1" || m.Headers[HeaderAttempt] != "3" ||
		m.Headers[HeaderCompensation] != "false" || m.Headers[HeaderCommand] != "reserve_stock" || m.Headers[HeaderReplyTopic] != "replies" {
		t.Fatalf("command message %+v", m)
	}
	cmd, err := p.decodeCommand(k.record(m, wireItemV1, payload))
	if err != nil {
		t.Fatal(err)
	}
	check("header format", cmd)
	var resolved wireReserve
	if err := cmd.Decode(&resolved); err != nil || resolved.Note != "none" {
		t.Fatalf("the writer's schema was not resolved against the reader's: %+v %v", resolved, err)
	}

	// The envelope format older orchestrators wrote is still read.
	envValue, err := avro.Marshal(k.codec.MustSchema(CommandType), env)
	if err != nil {
		t.Fatal(err)
	}
	old := outbox.Message{Topic: "catalog.commands", Type: CommandType, SagaID: env.SagaID}
	s, _ := k.codec.Schema(CommandType)
	cmd, err = p.decodeCommand(k.record(old, s.Definition, envValue))
	if err != nil {
		t.Fatal(err)
	}
	// An old envelope's payload has no writer schema to resolve: it is
	// read with the reader's, so encode it with that.
	_, cmd.Payload, _ = k.codec.Encode("test.wire.Reserve", wireReserve{Item: "book", Qty: 2})
	check("envelope", cmd)

	// A command without payload is an Empty record, zero bytes.
	bare := env
	bare.PayloadType, bare.Payload = "", []byte{}
	m = commandMessage("catalog.commands", &bare)
	if m.Type != EmptyType || len(m.Value.(avrobin.Encoded)) != 0 {
		t.Fatalf("bare command %s %v", m.Type, m.Value)
	}
	es, _ := k.codec.Schema(EmptyType)
	cmd, err = p.decodeCommand(k.record(m, es.Definition, nil))
	if err != nil || cmd.PayloadType != "" || len(cmd.Payload) != 0 {
		t.Fatalf("bare command %+v, %v", cmd, err)
	}

	// Replies, in both formats.
	rs, _ := k.codec.Schema("test.wire.Reserved")
	_, held, _ := k.codec.Encode("test.wire.Reserved", map[string]any{"hold": "h1"})
	r := &replyEnvelope{SagaID: sagaID.String(), Step: 1, Attempt: 3, Compensation: true, Outcome: wireRejected,
		Reason: "out of stock", PayloadType: "test.wire.Reserved", Payload: held}
	rm := replyRecord("replies", r)
	if rm.Type != "test.wire.Reserved" || rm.Headers[HeaderOutcome] != "REJECTED" || rm.Headers[HeaderReason] != "out of stock" {
		t.Fatalf("reply message %+v", rm)
	}
	envReply, err := avro.Marshal(k.codec.MustSchema(ReplyType), r)
	if err != nil {
		t.Fatal(err)
	}
	rps, _ := k.codec.Schema(ReplyType)
	for what, msg := range map[string]*message.Message{
		"header format": k.record(rm, rs.Definition, held),
		"envelope":      k.record(outbox.Message{Topic: "replies", Type: ReplyType, SagaID: r.SagaID}, rps.Definition, envReply),
	} {
		got, err := o.decodeReply(msg)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got.codec = k.codec
		var p struct {
			Hold string `avro:"hold"`
		}
		if got.SagaID != sagaID || got.Step != 1 || got.Attempt != 3 || !got.Compensation || got.Outcome != OutcomeRejected ||
			got.Reason != "out of stock" || got.PayloadType != "test.wire.Reserved" || got.Decode(&p) != nil || p.Hold != "h1" {
			t.Fatalf("%s: reply %+v payload %+v", what, got, p)
		}
	}

	// Records that are not saga messages are dead-lettered, not retried.
	noStep := commandMessage("catalog.commands", &env)
	delete(noStep.Headers, HeaderStep)
	for what, msg := range map[string]*message.Message{
		"no step header": k.record(noStep, wireItemV1, payload),
		"type header disagrees with the value": func() *message.Message {
			msg := k.record(commandMessage("catalog.commands", &env), wireItemV1, payload)
			msg.Metadata.Set(outbox.HeaderType, "test.wire.Reserved")
			return msg
		}(),
		"no saga id": func() *message.Message {
			msg := k.record(commandMessage("catalog.commands", &env), wireItemV1, payload)
			msg.Metadata.Set(outbox.HeaderSagaID, "")
			return msg
		}(),
	} {
		_, err := p.decodeCommand(msg)
		if !errors.Is(err, errNotEnvelope) || !undecodable(err) {
			t.Errorf("%s: %v, want a dead-lettered errNotEnvelope", what, err)
		}
	}
}
