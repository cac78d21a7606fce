package shop

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// Ports says where each part listens on 127.0.0.1. Zero picks a free port.
type Ports struct {
	Users, Catalog, Orders, Kafka, Registry int
	// Console is the operator console over the order service's database.
	Console int
}

// DefaultPorts are docker-compose.yml's ports, so the same curl commands and
// tools work against either. The demo's are these unless a flag or the
// environment says otherwise (PortsFromEnv, Ports.RegisterFlags).
var DefaultPorts = Ports{Users: 8001, Catalog: 8002, Orders: 8003, Kafka: 9092, Registry: 8081, Console: 8090}

// portSetting is one port: what listens there, its flag and its variable.
type portSetting struct {
	what, flag, env string
	port            *int
}

func (p *Ports) settings() []portSetting {
	return []portSetting{
		{"userservice", "users-port", "SHOP_USERS_PORT", &p.Users},
		{"catalogservice", "catalog-port", "SHOP_CATALOG_PORT", &p.Catalog},
		{"orderservice", "orders-port", "SHOP_ORDERS_PORT", &p.Orders},
		{"the in-process Kafka", "kafka-port", "SHOP_KAFKA_PORT", &p.Kafka},
		{"the in-process Schema Registry", "registry-port", "SHOP_REGISTRY_PORT", &p.Registry},
		{"the operator console", "console-port", "SHOP_CONSOLE_PORT", &p.Console},
	}
}

// PortsFromEnv returns def with each port the environment sets replaced:
// SHOP_USERS_PORT, SHOP_CATALOG_PORT, SHOP_ORDERS_PORT, SHOP_KAFKA_PORT,
// SHOP_REGISTRY_PORT, SHOP_CONSOLE_PORT (0: any free port). A malformed value is an error
// naming the variable.
func PortsFromEnv(def Ports) (Ports, error) {
	p := def
	var errs []error
	for _, s := range p.settings() {
		v, ok := os.LookupEnv(s.env)
		if !ok || strings.TrimSpace(v) == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 || n > 65535 {
			errs = append(errs, fmt.Errorf("shop: %s=%q must be a port number from 0 (any free port) to 65535", s.env, v))
			continue
		}
		*s.port = n
	}
	return p, errors.Join(errs...)
}

// RegisterFlags adds -users-port, -catalog-port, -orders-port, -kafka-port,
// -registry-port and -console-port to fs, defaulting to p's current ports.
func (p *Ports) RegisterFlags(fs *flag.FlagSet) {
	for _, s := range p.settings() {
		fs.IntVar(s.port, s.flag, *s.port, fmt.Sprintf("port of %s on 127.0.0.1, 0 for any free port (%s)", s.what, s.env))
	}
}

// PortInUseError says which port of the shop is taken and how to choose
// another.
type PortInUseError struct {
	What string // "the in-process Kafka"
	Port int
	Flag string // "kafka-port"
	Env  string // "SHOP_KAFKA_PORT"
	Err  error
}

func (e *PortInUseError) Error() string {
	return fmt.Sprintf("shop: port %d is in use: %s cannot listen on 127.0.0.1:%d (is another shop, docker compose or a local service running?); "+
		"choose another with -%s=N or %s=N, or 0 for any free port: %v", e.Port, e.What, e.Port, e.Flag, e.Env, e.Err)
}

func (e *PortInUseError) Unwrap() error { return e.Err }

// checkPorts tries every fixed port before anything starts, so that a taken
// one is reported at once, all of them together, instead of after the
// databases were created and half the shop started.
func (p Ports) checkPorts() error {
	var errs []error
	for _, s := range p.settings() {
		if *s.port == 0 {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *s.port))
		if err != nil {
			errs = append(errs, &PortInUseError{What: s.what, Port: *s.port, Flag: s.flag, Env: s.env, Err: err})
			continue
		}
		_ = l.Close()
	}
	return errors.Join(errs...)
}

// portError is checkPorts' error for the one port that what failed on
// later (taken in between).
func (p *Ports) portError(port *int, err error) error {
	for _, s := range p.settings() {
		if s.port == port {
			return &PortInUseError{What: s.what, Port: *port, Flag: s.flag, Env: s.env, Err: err}
		}
	}
	return err
}
