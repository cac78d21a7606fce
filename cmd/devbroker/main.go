// Command devbroker runs a development Kafka (kfake) and Schema Registry
// (srfake) in one process until SIGTERM or SIGINT, and prints where they
// listen as one line on stdout:
//
//	devbroker kafka=127.0.0.1:9092 registry=http://127.0.0.1:8081
//
// Point the services' KAFKA_BROKERS and SCHEMA_REGISTRY_URL at it. Ports
// default to free ones (-kafka-port, -registry-port). Everything is kept in
// memory and lost on exit. The crash test (make test-crash) runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sagabox/sagabox/internal/devbroker"
	"github.com/sagabox/sagabox/orderservice"
	"github.com/sagabox/sagabox/schemas"
)

func main() {
	kafkaPort := flag.Int("kafka-port", 0, "Kafka's port on 127.0.0.1 (0: a free port)")
	registryPort := flag.Int("registry-port", 0, "the Schema Registry's port on 127.0.0.1 (0: a free port)")
	partitions := flag.Int("partitions", devbroker.DefaultPartitions, "partitions per topic")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := devbroker.Start(devbroker.Config{KafkaPort: *kafkaPort, RegistryPort: *registryPort, Partitions: *partitions,
		Topics: []string{schemas.TopicUserCommands, schemas.TopicCatalogCommands, schemas.TopicOrderEvents, orderservice.ReplyTopic}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(b.Line())
	if err := b.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
