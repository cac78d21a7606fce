// Package devbroker runs a development Kafka (kfake) and Schema Registry
// (srfake) in their own process, so that services run as separate OS
// processes (the crash test, a local run of the cmd/ mains) share one broker
// that outlives any of them. It is what `go run ./cmd/devbroker` starts.
//
// It is not Kafka: kfake keeps everything in memory and forgets it on exit.
// Consumer groups' offsets and the topics' records survive the restart of a
// client, not of the broker.
package devbroker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr/srfake"
)

// Defaults of Config.
const (
	// DefaultPartitions is how many partitions each topic gets.
	DefaultPartitions = 3
	// DefaultHost is where the broker and the registry listen.
	DefaultHost = "127.0.0.1"
)

// ErrInvalidConfig is returned by Start for a Config it cannot use.
var ErrInvalidConfig = errors.New("devbroker: invalid config")

// Config configures the broker.
type Config struct {
	// KafkaPort and RegistryPort are where Kafka and the Schema Registry
	// listen on 127.0.0.1. Zero picks a free port.
	KafkaPort, RegistryPort int
	// Partitions is the number of partitions of every topic, seeded or
	// created on first use. Defaults to DefaultPartitions.
	Partitions int
	// Topics are created at start-up with Partitions partitions. Others are
	// created on first use.
	Topics []string
}

// WithDefaults returns a copy of c with every unset field defaulted.
func (c Config) WithDefaults() Config {
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Partitions < 0:
		return fmt.Errorf("%w: Partitions is negative", ErrInvalidConfig)
	case c.KafkaPort < 0 || c.KafkaPort > 65535:
		return fmt.Errorf("%w: KafkaPort %d is not a port", ErrInvalidConfig, c.KafkaPort)
	case c.RegistryPort < 0 || c.RegistryPort > 65535:
		return fmt.Errorf("%w: RegistryPort %d is not a port", ErrInvalidConfig, c.RegistryPort)
	}
	return nil
}

// Broker is a running Kafka and Schema Registry.
type Broker struct {
	// Brokers are Kafka's addresses ("127.0.0.1:9092").
	Brokers []string
	// RegistryURL is the Schema Registry ("http://127.0.0.1:8081").
	RegistryURL string

	cluster  *kfake.Cluster
	registry *http.Server
	served   chan error
}

// Start starts Kafka and the registry. Close stops them.
func Start(cfg Config) (*Broker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(cfg.Partitions)}
	if len(cfg.Topics) > 0 {
		opts = append(opts, kfake.SeedTopics(int32(cfg.Partitions), cfg.Topics...))
	}
	if cfg.KafkaPort != 0 {
		opts = append(opts, kfake.Ports(cfg.KafkaPort))
	}
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("devbroker: start Kafka (kfake) on %s:%d: %w", DefaultHost, cfg.KafkaPort, err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(DefaultHost, strconv.Itoa(cfg.RegistryPort)))
	if err != nil {
		cluster.Close()
		return nil, fmt.Errorf("devbroker: Schema Registry cannot listen on %s:%d (is another one running?): %w", DefaultHost, cfg.RegistryPort, err)
	}
	b := &Broker{
		Brokers:     cluster.ListenAddrs(),
		RegistryURL: "http://" + l.Addr().String(),
		cluster:     cluster,
		registry:    &http.Server{Handler: srfake.NewRegistry().Handler(), ReadHeaderTimeout: 10 * time.Second},
		served:      make(chan error, 1),
	}
	go func() { b.served <- b.registry.Serve(l) }()
	return b, nil
}

// Line is the one line a devbroker prints on stdout once it serves:
// "devbroker kafka=127.0.0.1:40123 registry=http://127.0.0.1:40124".
// ParseLine reads it back.
func (b *Broker) Line() string {
	return fmt.Sprintf("devbroker kafka=%s registry=%s", strings.Join(b.Brokers, ","), b.RegistryURL)
}

// ParseLine reads a Line: the Kafka addresses and the registry's URL.
func ParseLine(line string) (brokers []string, registryURL string, err error) {
	fields := strings.Fields(line)
	if len(fields) == 0 || fields[0] != "devbroker" {
		return nil, "", fmt.Errorf("devbroker: %q is not a devbroker line (want %q)", line, "devbroker kafka=HOST:PORT registry=URL")
	}
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "kafka":
			brokers = strings.Split(v, ",")
		case "registry":
			registryURL = v
		}
	}
	if len(brokers) == 0 || brokers[0] == "" || registryURL == "" {
		return nil, "", fmt.Errorf("devbroker: line %q lacks kafka= or registry=", line)
	}
	return brokers, registryURL, nil
}

// Run serves until ctx is done, then closes the broker. It returns early,
// with the error, if the registry stops serving.
func (b *Broker) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		b.Close()
		return nil
	case err := <-b.served:
		b.Close()
		return fmt.Errorf("devbroker: Schema Registry stopped: %w", err)
	}
}

// Close stops Kafka and the registry.
func (b *Broker) Close() {
	_ = b.registry.Close()
	b.cluster.Close()
}
