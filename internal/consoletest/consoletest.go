// Package consoletest is a small real shop for the console's and the CLI's
// tests: a database, an in-process Kafka and Schema Registry, a shipment
// saga with its orchestrator, and participants an operator can break and
// mend. A "courier" that refuses to ship until told otherwise leaves sagas
// failed for an operator to retry; a warehouse that keeps answering with an
// error leaves one running for an operator to abort; an oversized message
// gets parked by the relay.
package consoletest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/sagabox/sagabox"
	"github.com/sagabox/sagabox/internal/testkit"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/saga"
)

// Topics and the saga's type.
const (
	SagaType       = "shipment"
	WarehouseTopic = "warehouse.commands"
	CourierTopic   = "courier.commands"
	ReplyTopic     = "shipment.replies"
	BlobTopic      = "blobs"
	// maxMessageBytes is the relay's limit: Park writes a bigger message.
	maxMessageBytes = 4096
)

const blobSchema = `{"type": "record", "name": "Blob", "namespace": "test.console", "fields": [{"name": "data", "type": "bytes"}]}`

type blob struct {
	Data []byte `avro:"data"`
}

// Parcel is the shipment saga's data.
type Parcel struct {
	Parcel string `json:"parcel"`
	To     string `json:"to"`
}

// Shop is the running fixture.
type Shop struct {
	DB     *testkit.Database
	Client *sagabox.Client
	Orch   *saga.Orchestrator[Parcel]
	Def    *saga.Definition[Parcel]
	// CourierDown makes the courier refuse to ship ("no driver today"):
	// the retriable last step is rejected and the saga ends failed.
	CourierDown atomic.Bool
	// WarehouseBusy makes the warehouse answer reserve with an error: the
	// first step backs off and retries, and the saga stays running.
	WarehouseBusy atomic.Bool

	ctx context.Context
}

// Definition is the shipment saga: reserve (warehouse, compensated by
// release), charge (a local pivot), ship (courier, retriable, one attempt
// per operator retry).
func Definition() *saga.Definition[Parcel] {
	return saga.MustDefinition(SagaType, 1,
		saga.Step[Parcel]{Name: "reserve",
			Invoke:     &saga.Invocation[Parcel]{Topic: WarehouseTopic, Command: "reserve"},
			Compensate: &saga.Invocation[Parcel]{Topic: WarehouseTopic, Command: "release"},
			Timeout:    time.Minute,
			Retry:      saga.RetryPolicy{MaxAttempts: 10000, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}},
		saga.Step[Parcel]{Name: "charge", Kind: saga.Pivot,
			Local: func(context.Context, pgx.Tx, *Parcel) error { return nil }},
		saga.Step[Parcel]{Name: "ship", Kind: saga.Retriable,
			Invoke:  &saga.Invocation[Parcel]{Topic: CourierTopic, Command: "ship"},
			Timeout: time.Minute, Retry: saga.RetryPolicy{MaxAttempts: 1}},
	)
}

// Start runs the shop until the test ends.
func Start(t testing.TB) *Shop {
	t.Helper()
	ctx := testkit.Ctx(t)
	s := &Shop{DB: testkit.NewDatabase(t), Def: Definition(), ctx: ctx}
	kafka := testkit.Kafka(t, 1)
	registry := srfake.New()
	t.Cleanup(registry.Close)
	var err error
	s.Client, err = sagabox.NewClient(s.DB.Pool, sagabox.Config{Brokers: kafka.ListenAddrs(), RegistryURL: registry.URL(),
		Schemas: []string{blobSchema}, Relay: outbox.RelayConfig{MaxMessageBytes: maxMessageBytes}})
	testkit.Must(t, err, "client")
	testkit.Must(t, s.Client.Migrate(ctx), "migrate")
	s.Orch, err = saga.NewOrchestrator(s.Client, saga.Config{ReplyTopic: ReplyTopic, PollInterval: 100 * time.Millisecond}, s.Def)
	testkit.Must(t, err, "orchestrator")
	_, err = saga.NewParticipant(s.Client, saga.ParticipantConfig{Name: "warehouse", CommandTopic: WarehouseTopic, Handlers: []saga.Handler{
		saga.HandleFunc("reserve", func(context.Context, pgx.Tx, *saga.Command) (any, error) {
			if s.WarehouseBusy.Load() {
				return nil, errors.New("warehouse: stock count in progress, try later")
			}
			return nil, nil
		}),
		saga.HandleFunc("release", func(context.Context, pgx.Tx, *saga.Command) (any, error) { return nil, nil }),
	}})
	testkit.Must(t, err, "warehouse")
	_, err = saga.NewParticipant(s.Client, saga.ParticipantConfig{Name: "courier", CommandTopic: CourierTopic, Handlers: []saga.Handler{
		saga.HandleFunc("ship", func(context.Context, pgx.Tx, *saga.Command) (any, error) {
			if s.CourierDown.Load() {
				return nil, errors.New("courier: no driver today")
			}
			return nil, nil
		}),
	}})
	testkit.Must(t, err, "courier")
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- s.Client.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("client: %v", err)
		}
	})
	select {
	case <-s.Client.Ready():
	case err := <-done:
		t.Fatalf("client stopped: %v", err)
	}
	return s
}

// StartSaga starts a shipment saga.
func (s *Shop) StartSaga(t testing.TB, p Parcel) uuid.UUID {
	t.Helper()
	var id uuid.UUID
	err := pgx.BeginFunc(s.ctx, s.DB.Pool, func(tx pgx.Tx) error {
		var err error
		id, err = s.Orch.Start(s.ctx, tx, p)
		return err
	})
	testkit.Must(t, err, "start saga")
	return id
}

// WaitStatus waits until the saga has status want and no pending operator
// request.
func (s *Shop) WaitStatus(t testing.TB, id uuid.UUID, want saga.Status) *saga.Info {
	t.Helper()
	var info *saga.Info
	testkit.Eventually(t, 60*time.Second, fmt.Sprintf("saga %s to be %s", id, want), func() bool {
		var err error
		info, err = saga.NewAdmin(s.DB.Pool).Get(s.ctx, id)
		return err == nil && info.Status == want && info.Request == nil
	})
	return info
}

// WaitAttempts waits until at least n attempts of the saga have ended.
func (s *Shop) WaitAttempts(t testing.TB, id uuid.UUID, n int) *saga.Info {
	t.Helper()
	var info *saga.Info
	testkit.Eventually(t, 60*time.Second, fmt.Sprintf("saga %s to have %d attempts", id, n), func() bool {
		var err error
		info, err = saga.NewAdmin(s.DB.Pool).Get(s.ctx, id)
		if err != nil {
			return false
		}
		ended := 0
		for _, a := range info.History {
			if a.FinishedAt != nil {
				ended++
			}
		}
		return ended >= n
	})
	return info
}

// FailedSaga starts a saga with the courier down and returns it once
// failed; the courier is back up afterwards, so a retry succeeds.
func (s *Shop) FailedSaga(t testing.TB, p Parcel) uuid.UUID {
	t.Helper()
	s.CourierDown.Store(true)
	defer s.CourierDown.Store(false)
	id := s.StartSaga(t, p)
	s.WaitStatus(t, id, saga.StatusFailed)
	return id
}

// Park writes a message too big for the relay and returns its outbox ID
// once the relay parked it.
func (s *Shop) Park(t testing.TB, key string) int64 {
	t.Helper()
	return s.ParkFor(t, key, "")
}

// ParkFor is Park for a message of the saga sagaID.
func (s *Shop) ParkFor(t testing.TB, key, sagaID string) int64 {
	t.Helper()
	err := pgx.BeginFunc(s.ctx, s.DB.Pool, func(tx pgx.Tx) error {
		return s.Client.Writer().Write(s.ctx, tx, outbox.Message{Topic: BlobTopic, Key: key, Type: "test.console.Blob", SagaID: sagaID,
			Value: blob{Data: []byte(strings.Repeat("x", 2*maxMessageBytes))}})
	})
	testkit.Must(t, err, "write an oversized message")
	var id int64
	testkit.Eventually(t, 60*time.Second, "the relay to park the oversized message", func() bool {
		err := s.DB.Pool.QueryRow(s.ctx, `SELECT id FROM sagabox.outbox WHERE key = $1 AND parked_at IS NOT NULL`, key).Scan(&id)
		return err == nil
	})
	return id
}
