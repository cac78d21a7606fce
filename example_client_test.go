package sagabox_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// One client per service: it owns the codec, the outbox writer and the
// relay, and runs what is attached to it. Here a service writes an event
// in its own transaction and an idempotent consumer attached to the same
// client reads it back from Kafka. (A real service gives Brokers and
// RegistryURL of its cluster; here both run in-process.)
func ExampleNewClient() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, drop, err := testkit.CreateDatabase(ctx, "example_client")
	if err != nil {
		panic(err)
	}
	defer drop() //nolint:errcheck
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		panic(err)
	}
	defer kafka.Close()
	registry := srfake.New()
	defer registry.Close()

	client, err := sagabox.NewClient(db.Pool, sagabox.Config{
		Brokers:     kafka.ListenAddrs(),
		RegistryURL: registry.URL(),
		Schemas:     []string{noteSchema},
		// Registered at start with a BACKWARD check: an incompatible
		// schema stops the deployment, not the messages.
		Publishes: map[string][]string{"notes": {"test.client.Note"}},
	})
	if err != nil {
		panic(err)
	}
	if err := client.Migrate(ctx); err != nil {
		panic(err)
	}

	got := make(chan string, 1)
	if _, err := saga.NewConsumer(client, saga.ConsumerConfig{
		Name:  "note-printer",
		Topic: "notes",
		Handler: func(ctx context.Context, tx pgx.Tx, e *saga.Event) error {
			var n note
			if err := e.Decode(&n); err != nil {
				return err // redelivered later; a bad record is dead-lettered
			}
			got <- fmt.Sprintf("%s %s key=%s: %s", e.Topic, e.Type, e.Key, n.Text)
			return nil
		},
	}); err != nil {
		panic(err)
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- client.Run(runCtx) }()
	<-client.Ready()

	// The note and the business change commit together or not at all.
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		return client.Writer().Write(ctx, tx, outbox.Message{
			Topic: "notes", Key: "n-1", Type: "test.client.Note", Value: note{Text: "hello"},
		})
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(<-got)

	stop() // attached parts stop first, then the relay drains
	fmt.Println("run:", <-done)
	// Output:
	// notes test.client.Note key=n-1: hello
	// run: <nil>
}
