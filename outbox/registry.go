package outbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riferrei/srclient"
	"golang.org/x/sync/singleflight"
)

// Subject returns the Schema Registry subject a message's schema is
// registered under: "<topic>-<Avro full name>" (Confluent's
// TopicRecordNameStrategy), so one topic can carry several event types, each
// evolving on its own.
func Subject(topic, fullName string) string { return topic + "-" + fullName }

// ErrIncompatibleSchema means a schema is not BACKWARD compatible with the
// latest version registered under its subject: consumers on the new schema
// could not read what was already published. Fix the schema (add defaults to
// new fields, do not remove fields without defaults) and redeploy.
var ErrIncompatibleSchema = errors.New("outbox: schema is not backward compatible with the registered version")

// RegisterSchemas registers the codec's schemas named names in registry for
// topic, each under Subject(topic, name), after checking that it is BACKWARD
// compatible with the subject's latest version (test registries such as
// srfake do not check). Call it at start-up for the topics a service knows
// it writes to, so that an incompatible schema stops the deployment instead
// of holding messages back later; the relay registers anything else the
// same way on first publish and finds these already there. Registering a
// schema again is harmless.
//
// It fails with ErrUnknownSchema for a name the codec does not know,
// ErrIncompatibleSchema for a schema consumers of the subject could not
// use, and ErrRegistryUnavailable when the registry cannot be reached.
func RegisterSchemas(registry srclient.ISchemaRegistryClient, codec *Codec, topic string, names ...string) error {
	for _, name := range names {
		s, ok := codec.Schema(name)
		if !ok {
			return fmt.Errorf("%w: %q: add its definition to outbox.NewCodec", ErrUnknownSchema, name)
		}
		if _, err := registerSchema(registry, Subject(topic, name), s); err != nil {
			return err
		}
	}
	return nil
}

// schemaResolver turns a schema fingerprint stored with a row into the
// Schema Registry ID to frame its value with. It registers schemas the first
// time it meets them (registerSchema, as RegisterSchemas does) and caches
// the IDs: the registry is asked once per subject and schema, not per
// message, also when several workers meet a new schema at once (they wait
// for one registration).
type schemaResolver struct {
	pool     *pgxpool.Pool
	registry srclient.ISchemaRegistryClient
	flight   singleflight.Group // one load or registration per key at a time

	mu   sync.Mutex
	defs map[string]*Schema // by fingerprint
	ids  map[string]int     // by subject + "\x00" + fingerprint
}

func newSchemaResolver(pool *pgxpool.Pool, registry srclient.ISchemaRegistryClient) *schemaResolver {
	return &schemaResolver{pool: pool, registry: registry, defs: map[string]*Schema{}, ids: map[string]int{}}
}

// registryError marks a failure to reach the registry: the message is fine
// and waits without spending its attempts.
type registryError struct{ err error }

func (e *registryError) Error() string { return fmt.Sprintf("%v: %v", ErrRegistryUnavailable, e.err) }
func (e *registryError) Unwrap() []error {
	return []error{ErrRegistryUnavailable, e.err}
}

func (r *schemaResolver) definition(ctx context.Context, fp []byte) (*Schema, error) {
	r.mu.Lock()
	s, ok := r.defs[string(fp)]
	r.mu.Unlock()
	if ok {
		return s, nil
	}
	v, err, _ := r.flight.Do("def\x00"+string(fp), func() (any, error) {
		r.mu.Lock()
		s, ok := r.defs[string(fp)]
		r.mu.Unlock()
		if ok {
			return s, nil
		}
		s, err := r.load(ctx, fp)
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		r.defs[string(fp)] = s
		r.mu.Unlock()
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Schema), nil
}

func (r *schemaResolver) load(ctx context.Context, fp []byte) (*Schema, error) {
	var name, def string
	err := r.pool.QueryRow(ctx, `SELECT name, definition FROM sagabox.outbox_schemas WHERE fingerprint = $1`, fp).Scan(&name, &def)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: fingerprint %x is not in sagabox.outbox_schemas (was the row written by something other than outbox.Writer?)", ErrUnknownSchema, fp)
	}
	if err != nil {
		return nil, fmt.Errorf("outbox: load schema %x: %w", fp, err)
	}
	parsed, err := avro.Parse(def)
	if err != nil {
		return nil, fmt.Errorf("outbox: stored schema %s does not parse: %w", name, err)
	}
	s := &Schema{Name: name, Avro: parsed, Definition: def}
	copy(s.Fingerprint[:], fp)
	return s, nil
}

// resolve returns the registry ID for the schema with fingerprint fp used on
// topic, registering it when needed.
func (r *schemaResolver) resolve(ctx context.Context, topic string, fp []byte) (int, error) {
	s, err := r.definition(ctx, fp)
	if err != nil {
		return 0, err
	}
	subject := Subject(topic, s.Name)
	key := subject + "\x00" + string(fp)
	r.mu.Lock()
	id, ok := r.ids[key]
	r.mu.Unlock()
	if ok {
		return id, nil
	}
	v, err, _ := r.flight.Do("id\x00"+key, func() (any, error) {
		// A worker that found no ID may get here after another one
		// registered it and left the flight.
		r.mu.Lock()
		id, ok := r.ids[key]
		r.mu.Unlock()
		if ok {
			return id, nil
		}
		id, err := registerSchema(r.registry, subject, s)
		if err != nil {
			return 0, err
		}
		r.mu.Lock()
		r.ids[key] = id
		r.mu.Unlock()
		return id, nil
	})
	if err != nil {
		return 0, err
	}
	return v.(int), nil
}

// registerSchema registers s under subject once it has checked that s is
// BACKWARD compatible with the subject's latest version, and returns its ID.
func registerSchema(registry srclient.ISchemaRegistryClient, subject string, s *Schema) (int, error) {
	latest, err := registry.GetLatestSchema(subject)
	switch {
	case err == nil:
		if latest.Schema() != s.Definition {
			if err := CheckBackward(s.Definition, latest.Schema()); err != nil {
				return 0, fmt.Errorf("%w: %s for subject %s, version %d: %v", ErrIncompatibleSchema, s.Name, subject, latest.Version(), err)
			}
		}
	case isNotFound(err):
		// First version of the subject: nothing to be compatible with.
	default:
		return 0, &registryError{fmt.Errorf("latest schema of %s: %w", subject, err)}
	}
	created, err := registry.CreateSchema(subject, s.Definition, srclient.Avro)
	if err != nil {
		if isNotFound(err) || isClientError(err) {
			return 0, fmt.Errorf("outbox: registry refused schema %s for %s: %w", s.Name, subject, err)
		}
		return 0, &registryError{fmt.Errorf("register %s: %w", subject, err)}
	}
	return created.ID(), nil
}

// CheckBackward reports whether a consumer using newDef can read data
// written with oldDef (Confluent's BACKWARD compatibility), using
// hamba/avro's schema compatibility check, with an error naming the
// incompatibility when it cannot. Each definition is parsed on its own
// (not through hamba/avro's global cache), so two versions of one record
// never mix.
func CheckBackward(newDef, oldDef string) error {
	reader, err := avro.ParseWithCache(newDef, "", &avro.SchemaCache{})
	if err != nil {
		return fmt.Errorf("new schema: %w", err)
	}
	writer, err := avro.ParseWithCache(oldDef, "", &avro.SchemaCache{})
	if err != nil {
		return fmt.Errorf("old schema: %w", err)
	}
	return avro.NewSchemaCompatibility().Compatible(reader, writer)
}

func isNotFound(err error) bool {
	var se srclient.Error
	return errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code/100 == 404)
}

func isClientError(err error) bool {
	var se srclient.Error
	if !errors.As(err, &se) {
		return false
	}
	c := se.Code
	if c >= 10000 {
		c /= 100
	}
	return c >= 400 && c < 500
}
