package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
)

// Errors a consumer sorts on: dead-letter ErrNotAvro, ErrUnknownSchemaID and
// ErrUndecodable; retry ErrRegistryUnavailable (the registry may come back,
// and the message is probably fine).
var (
	ErrNotAvro             = errors.New("outbox: value is not in the Confluent Avro wire format")
	ErrUnknownSchemaID     = errors.New("outbox: the Schema Registry does not know this schema ID")
	ErrRegistryUnavailable = errors.New("outbox: Schema Registry unavailable")
	ErrUndecodable         = errors.New("outbox: value does not decode with its schema")
)

// wireHeaderLen is the Confluent wire format header: magic byte 0 and a
// big-endian 4-byte schema ID, followed by the Avro binary.
const wireHeaderLen = 5

// frame prepends the Confluent wire format header to Avro binary.
func frame(schemaID int, avroBinary []byte) []byte {
	out := make([]byte, wireHeaderLen+len(avroBinary))
	binary.BigEndian.PutUint32(out[1:5], uint32(schemaID))
	copy(out[wireHeaderLen:], avroBinary)
	return out
}

// Decoder decodes Confluent-framed Avro values, fetching writer schemas from
// the Schema Registry by ID (once per ID) and, when the reader codec knows
// the record, resolving the writer schema against the reader's so that
// fields added with defaults decode. It is safe for concurrent use.
type Decoder struct {
	registry srclient.ISchemaRegistryClient
	reader   *Codec

	mu       sync.Mutex
	resolved map[int]avro.Schema // by schema ID: the writer's schema, resolved against the reader's
}

// NewDecoder returns a Decoder that looks schema IDs up in registry. reader
// may be nil: values then decode with the writer's schema as is.
func NewDecoder(registry srclient.ISchemaRegistryClient, reader *Codec) *Decoder {
	return &Decoder{registry: registry, reader: reader, resolved: map[int]avro.Schema{}}
}

// SchemaID returns the schema ID in a framed value.
func SchemaID(data []byte) (int, error) {
	if len(data) < wireHeaderLen || data[0] != 0 {
		return 0, ErrNotAvro
	}
	return int(binary.BigEndian.Uint32(data[1:5])), nil
}

// Decode decodes a framed value into v (a pointer to a struct with avro tags,
// or to a map[string]any/any) and returns the full name of its schema.
func (d *Decoder) Decode(data []byte, v any) (string, error) {
	id, err := SchemaID(data)
	if err != nil {
		return "", err
	}
	s, err := d.schema(id)
	if err != nil {
		return "", err
	}
	if err := avro.Unmarshal(s, data[wireHeaderLen:], v); err != nil {
		return "", fmt.Errorf("%w: schema ID %d: %v", ErrUndecodable, id, err)
	}
	name := ""
	if n, ok := s.(avro.NamedSchema); ok {
		name = n.FullName()
	}
	return name, nil
}

// Name returns the full name of a framed value's schema, fetching the
// schema from the registry once per ID as Decode does, without decoding the
// value. Its errors are Decode's.
func (d *Decoder) Name(data []byte) (string, error) {
	id, err := SchemaID(data)
	if err != nil {
		return "", err
	}
	s, err := d.schema(id)
	if err != nil {
		return "", err
	}
	if n, ok := s.(avro.NamedSchema); ok {
		return n.FullName(), nil
	}
	return "", nil
}

func (d *Decoder) schema(id int) (avro.Schema, error) {
	d.mu.Lock()
	s, ok := d.resolved[id]
	d.mu.Unlock()
	if ok {
		return s, nil
	}
	got, err := d.registry.GetSchema(id)
	if err != nil {
		var se srclient.Error
		if errors.As(err, &se) && (se.Code == 40403 || se.Code == http.StatusNotFound) {
			return nil, fmt.Errorf("%w: %d", ErrUnknownSchemaID, id)
		}
		return nil, fmt.Errorf("%w: get schema %d: %v", ErrRegistryUnavailable, id, err)
	}
	writer, err := avro.Parse(got.Schema())
	if err != nil {
		return nil, fmt.Errorf("%w: schema %d does not parse: %v", ErrUndecodable, id, err)
	}
	s = writer
	if named, ok := writer.(avro.NamedSchema); ok && d.reader != nil {
		if r, ok := d.reader.Schema(named.FullName()); ok {
			composite, err := avro.NewSchemaCompatibility().Resolve(r.Avro, writer)
			if err != nil {
				return nil, fmt.Errorf("%w: writer schema %d is not compatible with reader schema %s: %v", ErrUndecodable, id, r.Name, err)
			}
			s = composite
		}
	}
	d.mu.Lock()
	d.resolved[id] = s
	d.mu.Unlock()
	return s, nil
}

// Metadata keys the KafkaUnmarshaler adds besides the record's headers.
const (
	MetadataKey       = "kafka_key"
	MetadataPartition = "kafka_partition"
	MetadataOffset    = "kafka_offset"
	MetadataTopic     = "kafka_topic"
)

// KafkaUnmarshaler turns records the relay published into watermill messages
// for watermill-kafka's subscriber: the message UUID is the outbox message ID
// (so watermill middleware that deduplicates on UUID works across
// redeliveries), every header becomes metadata, and the Kafka key, topic,
// partition and offset are added. The payload stays Confluent-framed Avro:
// decode it with a Decoder.
type KafkaUnmarshaler struct{}

// Unmarshal implements watermill-kafka's Unmarshaler.
func (KafkaUnmarshaler) Unmarshal(km *sarama.ConsumerMessage) (*message.Message, error) {
	md := make(message.Metadata, len(km.Headers)+4)
	id := ""
	for _, h := range km.Headers {
		if h == nil {
			continue
		}
		k := string(h.Key)
		md.Set(k, string(h.Value))
		if k == HeaderID {
			id = string(h.Value)
		}
	}
	if id == "" {
		// Not written by an outbox: fall back to a position-derived ID, which
		// is stable across redeliveries of the same record.
		id = km.Topic + "/" + strconv.Itoa(int(km.Partition)) + "/" + strconv.FormatInt(km.Offset, 10)
	}
	md.Set(MetadataKey, string(km.Key))
	md.Set(MetadataTopic, km.Topic)
	md.Set(MetadataPartition, strconv.Itoa(int(km.Partition)))
	md.Set(MetadataOffset, strconv.FormatInt(km.Offset, 10))
	msg := message.NewMessage(id, km.Value)
	msg.Metadata = md
	return msg, nil
}
