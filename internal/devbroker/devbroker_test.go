package devbroker

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The broker serves Kafka and the registry where its line says, and the
// line parses back to those addresses.
func TestBrokerServesWhereItsLineSays(t *testing.T) {
	t.Parallel()
	b, err := Start(Config{Topics: []string{"t"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()

	brokers, reg, err := ParseLine(b.Line())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(brokers, ",") != strings.Join(b.Brokers, ",") || reg != b.RegistryURL {
		t.Fatalf("parsed %v %s from %q", brokers, reg, b.Line())
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("t"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	fs := cl.PollFetches(ctx)
	if fs.NumRecords() != 1 || string(fs.Records()[0].Value) != "v" {
		t.Fatalf("fetched %d records, errors %v", fs.NumRecords(), fs.Errors())
	}
	res, err := http.Get(reg + "/subjects")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("registry /subjects: %d", res.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestParseLineRefusesWhatIsNotALine(t *testing.T) {
	t.Parallel()
	for _, l := range []string{"", "kafka=x registry=y", "devbroker kafka=127.0.0.1:1", "devbroker registry=http://x"} {
		if _, _, err := ParseLine(l); err == nil {
			t.Errorf("ParseLine(%q) accepted", l)
		}
	}
	if _, err := Start(Config{Partitions: -1}); err == nil {
		t.Error("negative partitions accepted")
	}
}
