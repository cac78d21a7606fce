package saga_test

import (
	"encoding/json"

	"github.com/hamba/avro/v2"
	"github.com/sagabox/sagabox/outbox"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func avroUnmarshal(s *outbox.Schema, b []byte, v any) error { return avro.Unmarshal(s.Avro, b, v) }
