package saga

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Inbox makes any watermill handler an idempotent consumer: the handler's
// database work and a row recording the message ID commit in one
// transaction, and a message whose ID is already recorded is acknowledged
// without running the handler. The outbox relay gives every message a
// stable ID (outbox.KafkaUnmarshaler puts it in msg.UUID), so redeliveries
// are recognised.
type Inbox struct {
	pool     *pgxpool.Pool
	consumer string
}

// NewInbox returns an inbox for one consumer (a name unique to the handler:
// two handlers of the same message must not share it).
func NewInbox(pool *pgxpool.Pool, consumer string) *Inbox {
	return &Inbox{pool: pool, consumer: consumer}
}

type txKey struct{}

// Tx returns the transaction the Inbox middleware opened for the message
// being handled. Do the handler's database work in it.
func Tx(ctx context.Context) (pgx.Tx, bool) {
	tx, ok := ctx.Value(txKey{}).(pgx.Tx)
	return tx, ok
}

// Middleware is the watermill middleware (router.AddMiddleware or
// handler.AddMiddleware). The handler finds its transaction with saga.Tx.
// Messages it returns are published by the router after the commit.
func (i *Inbox) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context()
		var out []*message.Message
		err := pgx.BeginFunc(ctx, i.pool, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `INSERT INTO sagabox.saga_inbox (consumer, key) VALUES ($1, $2) ON CONFLICT DO NOTHING`, i.consumer, msg.UUID)
			if err != nil {
				return fmt.Errorf("saga: inbox: %w (did you run saga.Migrate?)", err)
			}
			if tag.RowsAffected() == 0 {
				return nil // processed before
			}
			msg.SetContext(context.WithValue(ctx, txKey{}, tx))
			defer msg.SetContext(ctx)
			out, err = h(msg)
			return err
		})
		if err != nil {
			return nil, err
		}
		return out, nil
	}
}
