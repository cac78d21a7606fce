package outbox

import (
	"crypto/sha256"
	"fmt"
	"strings"

	"github.com/hamba/avro/v2"

	"github.com/sagabox/sagabox/internal/avrobin"
)

// Schema is one Avro schema the writers encode with.
type Schema struct {
	// Name is the schema's full name (namespace.name): what Message.Type
	// refers to and, with the topic, what the registry subject is made of.
	Name string
	// Avro is the parsed schema.
	Avro avro.Schema
	// Definition is the schema text as given, defaults and docs included: it
	// is what gets registered, since compatibility depends on defaults.
	Definition string
	// Fingerprint identifies Definition in the outbox table.
	Fingerprint [32]byte
}

// Codec knows the Avro schemas of the messages a service writes and encodes
// values with them. It is pure and local: encoding never waits on the Schema
// Registry, so a registry outage cannot fail a business transaction. The
// relay registers the schemas and adds the registry IDs when it publishes.
type Codec struct {
	byName map[string]*Schema
	byFP   map[[32]byte]*Schema
}

// NewCodec parses the given Avro schema definitions (named types: records,
// enums or fixed). It refuses a definition that does not parse and two
// different definitions with the same name.
func NewCodec(definitions ...string) (*Codec, error) {
	c := &Codec{byName: map[string]*Schema{}, byFP: map[[32]byte]*Schema{}}
	for i, def := range definitions {
		def = strings.TrimSpace(def)
		s, err := avro.Parse(def)
		if err != nil {
			return nil, fmt.Errorf("outbox: schema %d does not parse: %w", i, err)
		}
		named, ok := s.(avro.NamedSchema)
		if !ok {
			return nil, fmt.Errorf("outbox: schema %d is a %s; give a named type (record, enum or fixed)", i, s.Type())
		}
		sch := &Schema{Name: named.FullName(), Avro: s, Definition: def, Fingerprint: sha256.Sum256([]byte(def))}
		if prev, ok := c.byName[sch.Name]; ok {
			if prev.Fingerprint == sch.Fingerprint {
				continue
			}
			return nil, fmt.Errorf("outbox: two different schemas named %s", sch.Name)
		}
		c.byName[sch.Name] = sch
		c.byFP[sch.Fingerprint] = sch
	}
	return c, nil
}

// MustCodec is NewCodec that panics, for schemas compiled into the binary.
func MustCodec(definitions ...string) *Codec {
	c, err := NewCodec(definitions...)
	if err != nil {
		panic(err)
	}
	return c
}

// Schema returns the schema with the given full name.
func (c *Codec) Schema(name string) (*Schema, bool) {
	s, ok := c.byName[name]
	return s, ok
}

// Schemas returns every schema the codec knows.
func (c *Codec) Schemas() []*Schema {
	out := make([]*Schema, 0, len(c.byName))
	for _, s := range c.byName {
		out = append(out, s)
	}
	return out
}

// selfDescribing is what hamba/avro's generator (avrogen -encoders) gives the
// Go types it generates: the value knows its schema.
type selfDescribing interface {
	Schema() avro.Schema
}

// resolve finds the schema for a message: by its Type, or by the schema the
// value carries.
func (c *Codec) resolve(typ string, v any) (*Schema, error) {
	if typ == "" {
		sd, ok := v.(selfDescribing)
		if !ok {
			return nil, fmt.Errorf("%w: set Message.Type to the Avro full name of the value's schema (the value %T does not carry one)", ErrUnknownSchema, v)
		}
		named, ok := sd.Schema().(avro.NamedSchema)
		if !ok {
			return nil, fmt.Errorf("%w: %T carries an unnamed schema", ErrUnknownSchema, v)
		}
		typ = named.FullName()
	}
	s, ok := c.byName[typ]
	if !ok {
		return nil, fmt.Errorf("%w: %q: add its definition to outbox.NewCodec", ErrUnknownSchema, typ)
	}
	return s, nil
}

// Encode encodes v with the schema named typ (or the schema v carries when
// typ is empty). An error names the field that does not fit.
func (c *Codec) Encode(typ string, v any) (*Schema, []byte, error) {
	s, err := c.resolve(typ, v)
	if err != nil {
		return nil, nil, err
	}
	if enc, ok := v.(avrobin.Encoded); ok {
		// This module's own code encoded it with this codec just now (a
		// saga's command or reply payload): checking it again would decode
		// and re-encode every saga message for nothing.
		return s, []byte(enc), nil
	}
	if raw, ok := v.(RawValue); ok {
		// Already Avro binary: prove it decodes with the schema and has no
		// trailing bytes before accepting it.
		if err := validateRaw(s.Avro, raw); err != nil {
			return s, nil, err
		}
		return s, raw, nil
	}
	b, err := avro.Marshal(s.Avro, v)
	if err != nil {
		return s, nil, fmt.Errorf("value does not fit schema %s: %w", s.Name, err)
	}
	return s, b, nil
}

// RawValue is a value already encoded as Avro binary (without the Confluent
// header). The writer checks that it decodes with the message's schema.
type RawValue []byte

func validateRaw(s avro.Schema, raw []byte) error {
	var sink any
	if err := avro.Unmarshal(s, raw, &sink); err != nil {
		return fmt.Errorf("value is not valid Avro binary for its schema: %w", err)
	}
	// Re-encoding the decoded value must give back the same number of bytes,
	// which catches trailing garbage that Unmarshal ignores.
	b, err := avro.Marshal(s, sink)
	if err != nil || len(b) != len(raw) {
		return fmt.Errorf("value is not valid Avro binary for its schema: %d bytes given, %d decoded", len(raw), len(b))
	}
	return nil
}

// MustSchema returns the Avro schema with the given full name and panics when
// the codec does not know it.
func (c *Codec) MustSchema(name string) avro.Schema {
	s, ok := c.byName[name]
	if !ok {
		panic(fmt.Sprintf("outbox: codec has no schema %q", name))
	}
	return s.Avro
}
