// Package schemas holds the Avro schemas of every message the shop puts on
// Kafka, and the Go types generated from them.
//
// The .avsc files are the source of truth: edit one, run
// `go generate ./schemas/`, commit both. Every message is sent as Avro in the
// Confluent wire format (magic byte, 4-byte schema ID, Avro binary).
//
// # Subjects
//
// A schema is registered under "<topic>-<full name>" (outbox.Subject, the
// TopicRecordNameStrategy), since one topic carries several record types:
//
//	order.events-sagabox.shop.OrderCreated
//	order.events-sagabox.shop.OrderApproved
//	order.events-sagabox.shop.OrderCancelled
//	catalog.commands-sagabox.shop.ReserveStock, -sagabox.shop.ReleaseStock
//	user.commands-sagabox.shop.DebitCredit, -sagabox.shop.RefundCredit
//	<reply topic>-sagabox.shop.StockReserved, -sagabox.shop.CreditDebited
//	<any saga topic>-sagabox.saga.Empty     (a command or reply without payload)
//
// A saga command or reply is its payload record itself, the saga metadata
// in Kafka headers (see the saga package), so any registry client decodes
// it. saga/ holds the saga package's records (Empty, DeadLetter, and the
// Command and Reply envelopes older versions wrote), checked here with
// their history like the shop's. Services register
// the subjects they know at start-up (outbox.RegisterSchemas); the outbox
// relay registers any other on first publish and caches every ID, so nothing
// waits on the registry on the hot path.
//
// # Evolving a schema
//
// Every new version must be BACKWARD compatible: a reader with the new
// schema must read data written with every older one (still in the topic,
// or still being written by instances not yet upgraded), so consumers can
// be upgraded first. In practice: add fields only with a default, never
// remove a field without a default, never change a type. Before changing a
// schema, copy the released version to history/<full name>/vN.avsc.
// compat_test.go checks the current schema against every version there with
// hamba/avro, because test registries (srfake) accept anything.
package schemas

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/hamba/avro/v2"
)

// TopicOrderEvents carries OrderCreated, OrderApproved and OrderCancelled,
// keyed by order ID so that one order's events stay in order.
const TopicOrderEvents = "order.events"

// Namespace is the Avro namespace of every shop schema.
const Namespace = "sagabox.shop"

// Full names of the top-level schemas: the values of outbox Message.Type and
// of the message_type header.
const (
	NameOrderCreated   = Namespace + ".OrderCreated"
	NameOrderApproved  = Namespace + ".OrderApproved"
	NameOrderCancelled = Namespace + ".OrderCancelled"
	NameReserveStock   = Namespace + ".ReserveStock"
	NameReleaseStock   = Namespace + ".ReleaseStock"
	NameStockReserved  = Namespace + ".StockReserved"
	NameDebitCredit    = Namespace + ".DebitCredit"
	NameRefundCredit   = Namespace + ".RefundCredit"
	NameCreditDebited  = Namespace + ".CreditDebited"
)

//go:embed *.avsc
var files embed.FS

//go:embed history
var history embed.FS

// sagaFiles are the saga package's own records (saga.Schemas()), kept here
// so that their history is checked like the shop's; compat_test.go checks
// that saga.Schemas() says the same.
//
//go:embed saga/*.avsc
var sagaFiles embed.FS

// All returns the definition of every current schema, as written in the
// .avsc files (docs and defaults included, since compatibility depends on
// them), sorted by file name. Pass them to outbox.NewCodec.
func All() []string {
	defs, err := load(files, ".")
	if err != nil {
		panic(err) // the files are compiled in; compat_test.go parses them all
	}
	out := make([]string, 0, len(defs))
	for _, d := range defs {
		out = append(out, d.Definition)
	}
	return out
}

// Definition returns the current definition of the schema with the given
// full name.
func Definition(fullName string) (string, bool) {
	defs, err := load(files, ".")
	if err != nil {
		panic(err)
	}
	for _, d := range defs {
		if d.FullName == fullName {
			return d.Definition, true
		}
	}
	return "", false
}

// def is one schema file.
type def struct {
	File       string
	FullName   string
	Definition string
	Schema     avro.Schema
}

// load parses every .avsc file in dir of fsys, each with its own cache so
// that versions of the same name never collide.
func load(fsys fs.FS, dir string) ([]def, error) {
	names, err := fs.Glob(fsys, dir+"/*.avsc")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []def
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		text := strings.TrimSpace(string(b))
		s, err := parse(text)
		if err != nil {
			return nil, fmt.Errorf("schemas: %s: %w", name, err)
		}
		named, ok := s.(avro.NamedSchema)
		if !ok {
			return nil, fmt.Errorf("schemas: %s: top-level schema must be a named type", name)
		}
		out = append(out, def{File: name, FullName: named.FullName(), Definition: text, Schema: s})
	}
	return out, nil
}

func parse(text string) (avro.Schema, error) {
	return avro.ParseWithCache(text, "", &avro.SchemaCache{})
}
