// Command quickstart is the smallest complete sagabox program: one service
// that writes an event in a business transaction and runs a two-step saga
// with one participant, against Postgres and an in-process Kafka and Schema
// Registry. It uses only public packages; copy it and replace the parts.
//
//	go run ./examples/quickstart    # DATABASE_URL, or the local Postgres
//
// The saga "welcome" greets a new member: step 1 asks the "stamps"
// participant for a membership number (a command through the outbox, a
// reply through the participant's outbox), step 2 (the pivot, a local step)
// stores the number with the member.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// The Avro schemas of what the program writes: an event and the
// participant's command and reply payloads. Real services generate Go
// types from .avsc files (see schemas/); plain structs with avro tags work
// too.
const (
	memberJoinedSchema = `{"type": "record", "name": "MemberJoined", "namespace": "quickstart",
	 "fields": [{"name": "member_id", "type": "string"}, {"name": "name", "type": "string"}]}`
	issueStampSchema = `{"type": "record", "name": "IssueStamp", "namespace": "quickstart",
	 "fields": [{"name": "member_id", "type": "string"}]}`
	stampIssuedSchema = `{"type": "record", "name": "StampIssued", "namespace": "quickstart",
	 "fields": [{"name": "number", "type": "long"}]}`
)

type MemberJoined struct {
	MemberID string `avro:"member_id"`
	Name     string `avro:"name"`
}

type IssueStamp struct {
	MemberID string `avro:"member_id"`
}

type StampIssued struct {
	Number int64 `avro:"number"`
}

// welcome is the saga's data, stored as JSON with the saga.
type welcome struct {
	MemberID string
	Number   int64
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	if err := run(ctx, url, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, databaseURL string, out io.Writer) error {
	// Kafka and the Schema Registry, in-process for the example. A real
	// service gives the client its brokers and registry URL.
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4))
	if err != nil {
		return err
	}
	defer kafka.Close()
	registry := srfake.New()
	defer registry.Close()

	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()

	// 1. One client owns the runtime: codec, outbox writer, relay, schemas.
	client, err := sagabox.NewClient(pool, sagabox.Config{
		Brokers:     kafka.ListenAddrs(),
		RegistryURL: registry.URL(),
		Schemas:     []string{memberJoinedSchema, issueStampSchema, stampIssuedSchema},
	})
	if err != nil {
		return err
	}
	if err := client.Migrate(ctx); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS quickstart_members (
		id text PRIMARY KEY, name text NOT NULL, number bigint)`); err != nil {
		return err
	}

	// 2. The participant: answers "issue_stamp" commands, idempotently
	// (the inbox stores each reply; a redelivered command gets it again).
	var next int64 = 1000
	if _, err := saga.NewParticipant(client, saga.ParticipantConfig{
		Name:         "stamps",
		CommandTopic: "stamps.commands",
		Handlers: []saga.Handler{
			saga.HandleCommand("issue_stamp", func(ctx context.Context, tx pgx.Tx, cmd *saga.Command, p IssueStamp) (any, error) {
				next++
				fmt.Fprintf(out, "participant: issue_stamp for %s -> %d\n", p.MemberID, next)
				return saga.Payload{Type: "quickstart.StampIssued", Value: &StampIssued{Number: next}}, nil
			}),
		},
	}); err != nil {
		return err
	}

	// 3. The saga: ask for a stamp, then store it (the pivot).
	def, err := saga.NewDefinition("welcome", 1,
		saga.Step[welcome]{
			Name: "issue_stamp",
			Invoke: &saga.Invocation[welcome]{Topic: "stamps.commands", Command: "issue_stamp", Type: "quickstart.IssueStamp",
				Payload: func(w *welcome) (any, error) { return &IssueStamp{MemberID: w.MemberID}, nil },
				OnReply: func(w *welcome, r *saga.Reply) error {
					var s StampIssued
					if err := r.Decode(&s); err != nil {
						return err
					}
					w.Number = s.Number
					return nil
				}},
			Timeout: 30 * time.Second,
		},
		saga.Step[welcome]{
			Name: "store_stamp", Kind: saga.Pivot,
			Local: func(ctx context.Context, tx pgx.Tx, w *welcome) error {
				_, err := tx.Exec(ctx, `UPDATE quickstart_members SET number = $2 WHERE id = $1`, w.MemberID, w.Number)
				return err
			},
		},
	)
	if err != nil {
		return err
	}
	orch, err := saga.NewOrchestrator(client, saga.Config{ReplyTopic: "welcome.replies"}, def)
	if err != nil {
		return err
	}

	// 4. Run everything until we are done; Run stops the consumers first,
	// then lets the relay publish what they wrote.
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	done := make(chan error, 1)
	go func() { done <- client.Run(runCtx) }()
	select {
	case <-client.Ready():
	case err := <-done:
		return err
	}

	// 5. A business transaction: the member, its event and its saga commit
	// together, or not at all.
	memberID := fmt.Sprintf("m-%d", time.Now().UnixNano())
	var sagaID uuid.UUID
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO quickstart_members (id, name) VALUES ($1, $2)`, memberID, "Ada"); err != nil {
			return err
		}
		if err := client.Writer().Write(ctx, tx, outbox.Message{Topic: "member.events", Key: memberID,
			Type: "quickstart.MemberJoined", Value: &MemberJoined{MemberID: memberID, Name: "Ada"}}); err != nil {
			return err
		}
		id, err := orch.Start(ctx, tx, welcome{MemberID: memberID})
		sagaID = id
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "service: member %s joined; event written, saga started\n", memberID)

	// 6. Watch the saga through the operator API until it is finished.
	admin := client.SagaAdmin()
	var info *saga.Info
	for info == nil || !info.Status.Finished() {
		select {
		case err := <-done:
			return fmt.Errorf("the client stopped: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if info, err = admin.Get(ctx, sagaID); err != nil {
			return err
		}
	}
	for _, a := range info.History {
		fmt.Fprintf(out, "saga: step %d %s attempt %d: %s\n", a.Step, a.Name, a.Attempt, a.Outcome)
	}
	fmt.Fprintf(out, "saga: %s\n", info.Status)
	if info.Status != saga.StatusSucceeded {
		return errors.New("the saga did not succeed: " + info.LastError)
	}
	var number int64
	if err := pool.QueryRow(ctx, `SELECT number FROM quickstart_members WHERE id = $1`, memberID).Scan(&number); err != nil {
		return err
	}
	fmt.Fprintf(out, "service: member %s has stamp %d\n", memberID, number)

	stopRun()
	if err := <-done; err != nil {
		return err
	}
	fmt.Fprintln(out, "quickstart: ok")
	return nil
}
