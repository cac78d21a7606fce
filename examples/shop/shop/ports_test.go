package shop_test

import (
	"context"
	"errors"
	"flag"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/sagabox/sagabox/examples/shop/shop"
	"github.com/sagabox/sagabox/internal/testkit"
)

// Issue 11 (demo ports): a taken port stops the shop at once with an error
// naming the port, what wanted it, and the flag and variable that move it;
// every taken port is named, not only the first.
func TestATakenPortIsNamedWithHowToChooseAnother(t *testing.T) {
	t.Parallel()
	taken := func() (net.Listener, int) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		testkit.Must(t, err, "listen")
		t.Cleanup(func() { l.Close() })
		return l, l.Addr().(*net.TCPAddr).Port
	}
	_, kafka := taken()
	_, users := taken()
	_, err := shop.Start(context.Background(), shop.Config{DatabaseURL: testkit.AdminURL(), Fresh: true,
		Ports: shop.Ports{Kafka: kafka, Users: users}})
	var pe *shop.PortInUseError
	if !errors.As(err, &pe) {
		t.Fatalf("start with taken ports: %v, want a PortInUseError", err)
	}
	for _, want := range []string{
		"127.0.0.1:" + strconv.Itoa(kafka), "the in-process Kafka", "-kafka-port", "SHOP_KAFKA_PORT",
		"127.0.0.1:" + strconv.Itoa(users), "userservice", "-users-port", "SHOP_USERS_PORT",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
}

func TestPortsComeFromTheEnvironmentAndFlags(t *testing.T) {
	t.Setenv("SHOP_KAFKA_PORT", "19092")
	t.Setenv("SHOP_USERS_PORT", "0")
	p, err := shop.PortsFromEnv(shop.DefaultPorts)
	testkit.Must(t, err, "from env")
	fs := flag.NewFlagSet("shop", flag.ContinueOnError)
	p.RegisterFlags(fs)
	testkit.Must(t, fs.Parse([]string{"-orders-port", "18003"}), "flags")
	if want := (shop.Ports{Users: 0, Catalog: 8002, Orders: 18003, Kafka: 19092, Registry: 8081, Console: 8090}); p != want {
		t.Fatalf("ports %+v, want %+v", p, want)
	}
	t.Setenv("SHOP_REGISTRY_PORT", "eighty")
	if _, err := shop.PortsFromEnv(shop.DefaultPorts); err == nil || !strings.Contains(err.Error(), "SHOP_REGISTRY_PORT") {
		t.Fatalf("a malformed port: %v", err)
	}
}
