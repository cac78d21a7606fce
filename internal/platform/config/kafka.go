package config

import "github.com/riferrei/srclient"

// Kafka says where a service's Kafka and Schema Registry are. The services
// hand it to sagabox.Config.
type Kafka struct {
	// Brokers are the bootstrap addresses (KAFKA_BROKERS, comma
	// separated). Empty: the service serves its HTTP API only, and what it
	// writes to the outbox waits there until a relay runs.
	Brokers []string
	// RegistryURL is the Schema Registry (SCHEMA_REGISTRY_URL). Required
	// with Brokers unless Registry is set.
	RegistryURL string
	// Registry, when set, is used instead of a client of RegistryURL.
	Registry srclient.ISchemaRegistryClient
}

// KafkaFromEnv reads KAFKA_BROKERS and SCHEMA_REGISTRY_URL.
func KafkaFromEnv(e *Env) Kafka {
	return Kafka{Brokers: e.List("KAFKA_BROKERS", nil), RegistryURL: e.String("SCHEMA_REGISTRY_URL", "")}
}

// Enabled reports whether Kafka is configured.
func (k Kafka) Enabled() bool { return len(k.Brokers) > 0 }
