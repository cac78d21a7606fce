// Package avrobin marks Avro binary that sagabox's own code has just
// encoded with the codec the outbox writer uses, so that the writer does not
// decode it again to check it (outbox.RawValue, for bytes from elsewhere, is
// checked). Being internal, only this module can make one.
package avrobin

// Encoded is Avro binary produced by the writer's Codec a moment ago: a
// saga's command payload, or a reply payload its handler just returned.
type Encoded []byte
