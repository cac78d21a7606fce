package messaging

import (
	"errors"
	"fmt"

	"github.com/riferrei/srclient"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/schemas"
)

// RegisterSchemas registers the schemas the service publishes on topic in
// the Schema Registry, under outbox.Subject(topic, name) ("order.events-
// sagabox.shop.OrderCreated"), checking first that each is BACKWARD
// compatible with the subject's latest version (test registries do not
// check). Call it at start-up for the topics the service knows it writes
// to, so an incompatible schema stops the deployment instead of parking
// messages later; the relay registers anything else on first publish and
// finds these already there. Without Kafka it does nothing.
func (m *Messaging) RegisterSchemas(topic string, names ...string) error {
	if m.Registry == nil {
		return nil
	}
	for _, name := range names {
		s, ok := m.Codec.Schema(name)
		if !ok {
			return fmt.Errorf("messaging: the codec has no schema %s", name)
		}
		subject := outbox.Subject(topic, name)
		latest, err := m.Registry.GetLatestSchema(subject)
		switch {
		case err == nil:
			if latest.Schema() != s.Definition {
				if err := schemas.CheckBackward(s.Definition, latest.Schema()); err != nil {
					return fmt.Errorf("messaging: %s is not BACKWARD compatible with %s version %d: %w", name, subject, latest.Version(), err)
				}
			}
		case notFound(err):
		default:
			return fmt.Errorf("messaging: latest schema of %s: %w", subject, err)
		}
		if _, err := m.Registry.CreateSchema(subject, s.Definition, srclient.Avro); err != nil {
			return fmt.Errorf("messaging: register %s: %w", subject, err)
		}
	}
	return nil
}

func notFound(err error) bool {
	var e srclient.Error
	return errors.As(err, &e) && (e.Code == 40401 || e.Code == 40402 || e.Code == 404)
}
