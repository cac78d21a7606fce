package saga

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riferrei/srclient"
	"github.com/sagabox/sagabox/outbox"
)

// Command is a saga command as a participant sees it.
type Command struct {
	SagaID       uuid.UUID
	SagaType     string
	Step         int
	StepName     string
	Attempt      int
	Compensation bool
	// Name is the command, such as "reserve_stock".
	Name          string
	ReplyTopic    string
	PayloadType   string
	Payload       []byte
	MessageID     string
	CorrelationID string

	codec           *outbox.Codec
	transientReason string
	rollback        bool
}

// Decode decodes the command's payload into v with the schema named
// PayloadType, which the participant's codec must know.
func (c *Command) Decode(v any) error { return decodePayload(c.codec, c.PayloadType, c.Payload, v) }

// Result is what a successful handler returns: an optional reply payload.
type Result struct {
	// Type is the Avro full name of Value's schema; empty for no payload.
	Type  string
	Value any
}

// HandlerFunc runs a command's business change in tx (inside a savepoint:
// do not commit or roll back tx). Return nil (or a
// Result with a payload) for success, an error wrapping ErrRejected (Reject)
// for a final "no", or any other error for a transient failure: then
// nothing is kept and the orchestrator retries after a backoff.
type HandlerFunc func(ctx context.Context, tx pgx.Tx, cmd *Command) (*Result, error)

// ParticipantConfig configures a Participant.
type ParticipantConfig struct {
	// Name identifies the participant in the inbox (and defaults its
	// consumer group). Required.
	Name string
	// Pool is the participant's database, holding the saga tables (for the
	// inbox) and the outbox. Required.
	Pool *pgxpool.Pool
	// Writer writes the replies into the outbox. Required.
	Writer *outbox.Writer
	// Codec must know saga.Schemas() and the payload types. Required.
	Codec *outbox.Codec

	// Brokers, Registry and CommandTopic are needed by Run.
	Brokers      []string
	Registry     srclient.ISchemaRegistryClient
	CommandTopic string
	// ConsumerGroup defaults to "sagabox-participant-" + Name.
	ConsumerGroup string
	// DeadLetterTopic defaults to CommandTopic + ".dlq".
	DeadLetterTopic string
	// OverwriteSaramaConfig replaces SaramaConfig().
	OverwriteSaramaConfig *sarama.Config
	// Batch is the most commands run in one transaction (each in its own
	// savepoint) by Run: commands arriving on different partitions at the
	// same moment share a commit. Defaults to DefaultReplyBatch.
	Batch int
	// Retention is how long Run keeps inbox entries (and finished sagas,
	// when the participant shares its database with an orchestrator) before
	// deleting them every CleanupInterval. An entry must outlive any
	// redelivery of its command. Negative disables the cleanup. Defaults to
	// DefaultRetention and DefaultCleanupInterval.
	Retention       time.Duration
	CleanupInterval time.Duration
	// Logger defaults to a logger that discards everything.
	Logger *slog.Logger
}

// Participant runs saga commands idempotently. For each command, the
// business change, the reply and an inbox entry keyed on (saga, step, phase)
// commit in one transaction, so:
//   - a redelivered or retried command has no second effect and gets the
//     stored reply again;
//   - a compensation of an action that never ran succeeds and does nothing,
//     and records the action as cancelled;
//   - an action arriving after its compensation does nothing (it is
//     answered "rejected").
type Participant struct {
	cfg      ParticipantConfig
	log      *slog.Logger
	handlers map[string]HandlerFunc
	decoder  *outbox.Decoder
	batch    *batcher[*Command]
}

// NewParticipant checks the configuration.
func NewParticipant(cfg ParticipantConfig) (*Participant, error) {
	switch {
	case cfg.Name == "":
		return nil, fmt.Errorf("%w: ParticipantConfig.Name is required", ErrInvalidConfig)
	case cfg.Pool == nil:
		return nil, fmt.Errorf("%w: ParticipantConfig.Pool is required", ErrInvalidConfig)
	case cfg.Writer == nil:
		return nil, fmt.Errorf("%w: ParticipantConfig.Writer is required", ErrInvalidConfig)
	}
	if err := checkCodec(cfg.Codec, "ParticipantConfig.Codec"); err != nil {
		return nil, err
	}
	if cfg.ConsumerGroup == "" {
		cfg.ConsumerGroup = "sagabox-participant-" + cfg.Name
	}
	if cfg.DeadLetterTopic == "" && cfg.CommandTopic != "" {
		cfg.DeadLetterTopic = cfg.CommandTopic + ".dlq"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultReplyBatch
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.CleanupInterval <= 0 {
		cfg.CleanupInterval = DefaultCleanupInterval
	}
	p := &Participant{cfg: cfg, handlers: map[string]HandlerFunc{},
		log: cfg.Logger.With("component", "saga.participant", "participant", cfg.Name)}
	if cfg.Registry != nil {
		p.decoder = outbox.NewDecoder(cfg.Registry, cfg.Codec)
	}
	return p, nil
}

// Handle registers the handler of a command (an action or a compensation).
// Call it before Run.
func (p *Participant) Handle(command string, h HandlerFunc) { p.handlers[command] = h }

// Process runs one command: see Participant. It returns an error only when
// the database failed; then nothing was written and the command should be
// delivered again.
func (p *Participant) Process(ctx context.Context, cmd *Command) error {
	return p.processBatch(ctx, []*Command{cmd})[0]
}

// processBatch runs commands in one transaction, each in a savepoint. If the
// transaction fails (a deadlock with another batch, say), each command is
// run again in its own.
func (p *Participant) processBatch(ctx context.Context, cmds []*Command) []error {
	errs := make([]error, len(cmds))
	err := pgx.BeginFunc(ctx, p.cfg.Pool, func(tx pgx.Tx) error {
		for _, cmd := range cmds {
			if err := p.processIn(ctx, tx, cmd); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(cmds) == 1 {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for i, cmd := range cmds {
		errs[i] = p.processBatch(ctx, []*Command{cmd})[0]
	}
	return errs
}

// processIn runs one command in tx and writes its reply. The statements
// after the handler (the reply stored in the inbox, the reply in the
// outbox) travel in one round trip.
func (p *Participant) processIn(ctx context.Context, tx pgx.Tx, cmd *Command) error {
	cmd.codec = p.cfg.Codec
	cmd.rollback, cmd.transientReason = false, "" // a retried batch runs it again
	reply, fresh, err := p.process(ctx, tx, cmd)
	if err != nil {
		return err
	}
	key := barrierKey(cmd, cmd.Compensation)
	b := &pgx.Batch{}
	if cmd.rollback {
		// The handler failed: undo its changes.
		b.Queue(`ROLLBACK TO SAVEPOINT sagabox_handler`)
	}
	b.Queue(`RELEASE SAVEPOINT sagabox_handler`)
	switch {
	case reply == nil:
		// A transient failure: the handler's changes were rolled back; drop
		// the inbox entry too, and say so, so the orchestrator backs off and
		// retries.
		b.Queue(`DELETE FROM sagabox.saga_inbox WHERE consumer = $1 AND key = $2`, p.cfg.Name, key)
		reply = &replyEnvelope{Outcome: string(Error), Reason: cmd.transientReason}
	case fresh:
		if reply.Payload == nil {
			reply.Payload = []byte{}
		}
		b.Queue(`UPDATE sagabox.saga_inbox SET outcome = $3, reason = $4, payload_type = $5, payload = $6 WHERE consumer = $1 AND key = $2`,
			p.cfg.Name, key, reply.Outcome, reply.Reason, reply.PayloadType, reply.Payload)
	}
	if err := p.reply(ctx, batchExecer{b}, cmd, reply); err != nil {
		return err
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("saga: %s: reply: %w", cmd.Name, err)
	}
	return nil
}

func barrierKey(cmd *Command, compensation bool) string {
	phase := "action"
	if compensation {
		phase = "compensation"
	}
	return cmd.SagaID.String() + "/" + strconv.Itoa(cmd.Step) + "/" + phase
}

// process returns the reply to send (nil after a transient failure) and
// whether it is new (to be stored) rather than the stored one.
func (p *Participant) process(ctx context.Context, tx pgx.Tx, cmd *Command) (*replyEnvelope, bool, error) {
	key := barrierKey(cmd, cmd.Compensation)
	// The savepoint the handler runs in travels with the inbox insert;
	// processIn releases it (or rolls back to it) with the reply.
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO sagabox.saga_inbox (consumer, key) VALUES ($1, $2) ON CONFLICT DO NOTHING`, p.cfg.Name, key)
	b.Queue(`SAVEPOINT sagabox_handler`)
	br := tx.SendBatch(ctx, b)
	tag, err := br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, false, fmt.Errorf("saga: inbox: %w (did you run saga.Migrate?)", err)
	}
	if tag.RowsAffected() == 0 {
		// Seen before: answer what we answered then.
		r := &replyEnvelope{}
		err := tx.QueryRow(ctx, `SELECT outcome, reason, payload_type, coalesce(payload, '') FROM sagabox.saga_inbox WHERE consumer = $1 AND key = $2`,
			p.cfg.Name, key).Scan(&r.Outcome, &r.Reason, &r.PayloadType, &r.Payload)
		if err != nil {
			return nil, false, fmt.Errorf("saga: inbox: %w", err)
		}
		p.log.DebugContext(ctx, "saga: duplicate command, sending the stored reply", "saga_id", cmd.SagaID, "step", cmd.Step)
		return r, false, nil
	}
	var reply *replyEnvelope
	if cmd.Compensation {
		// Record the action as cancelled if it never ran; it then does
		// nothing if it arrives later.
		action := barrierKey(cmd, false)
		tag, err := tx.Exec(ctx, `INSERT INTO sagabox.saga_inbox (consumer, key, outcome, reason) VALUES ($1, $2, $3, 'cancelled: compensated before it ran') ON CONFLICT DO NOTHING`,
			p.cfg.Name, action, string(Rejected))
		if err != nil {
			return nil, false, fmt.Errorf("saga: inbox: %w", err)
		}
		actionOutcome := string(Rejected)
		if tag.RowsAffected() == 0 {
			if err := tx.QueryRow(ctx, `SELECT outcome FROM sagabox.saga_inbox WHERE consumer = $1 AND key = $2`, p.cfg.Name, action).Scan(&actionOutcome); err != nil {
				return nil, false, fmt.Errorf("saga: inbox: %w", err)
			}
		}
		if actionOutcome != string(Success) {
			// The action never ran, or was refused: nothing to undo.
			reply = &replyEnvelope{Outcome: string(Success), Reason: "nothing to compensate"}
		}
	}
	if reply == nil {
		reply, err = p.run(ctx, tx, cmd)
		if err != nil || reply == nil {
			return nil, false, err
		}
	}
	return reply, true, nil
}

// run calls the handler (inside the savepoint process opened).
func (p *Participant) run(ctx context.Context, tx pgx.Tx, cmd *Command) (*replyEnvelope, error) {
	h, ok := p.handlers[cmd.Name]
	if !ok {
		return &replyEnvelope{Outcome: string(Rejected), Reason: fmt.Sprintf("participant %s has no handler for %q", p.cfg.Name, cmd.Name)}, nil
	}
	res, herr := h(ctx, tx, cmd)
	if herr != nil {
		cmd.rollback = true
		if errors.Is(herr, ErrRejected) {
			return &replyEnvelope{Outcome: string(Rejected), Reason: rejectionReason(herr)}, nil
		}
		p.log.WarnContext(ctx, "saga: handler failed, the orchestrator will retry", "saga_id", cmd.SagaID, "command", cmd.Name, "error", herr)
		cmd.transientReason = herr.Error()
		return nil, nil
	}
	r := &replyEnvelope{Outcome: string(Success)}
	if res != nil && res.Type != "" {
		var err error
		r.PayloadType = res.Type
		if r.Payload, err = encodePayload(p.cfg.Codec, res.Type, res.Value); err != nil {
			return nil, fmt.Errorf("saga: %s reply payload: %w", cmd.Name, err)
		}
	}
	return r, nil
}

func (p *Participant) reply(ctx context.Context, tx outbox.Execer, cmd *Command, r *replyEnvelope) error {
	r.SagaID, r.Step, r.Attempt, r.Compensation = cmd.SagaID.String(), cmd.Step, cmd.Attempt, cmd.Compensation
	if r.Payload == nil {
		r.Payload = []byte{}
	}
	return p.cfg.Writer.Write(ctx, tx, outbox.Message{Topic: cmd.ReplyTopic, Key: cmd.SagaID.String(), Type: ReplyType,
		Value: r, CorrelationID: cmd.CorrelationID, CausationID: cmd.MessageID, SagaID: cmd.SagaID.String()})
}

// HandleMessage is the watermill handler for the command topic: it decodes
// the command and processes it. Undecodable commands are dead-lettered; a
// registry or database outage makes it return the error, so the command is
// delivered again.
func (p *Participant) HandleMessage(msg *message.Message) error {
	ctx := msg.Context()
	cmd, err := p.decodeCommand(msg)
	if err != nil {
		if !undecodable(err) {
			return err
		}
		p.log.WarnContext(ctx, "saga: dead-lettering command", "message_id", msg.UUID, "error", err)
		return writeDeadLetter(ctx, p.cfg.Pool, p.cfg.Writer, p.cfg.DeadLetterTopic, msg, err)
	}
	if p.batch != nil {
		return p.batch.do(ctx, cmd)
	}
	return p.Process(ctx, cmd)
}

func (p *Participant) decodeCommand(msg *message.Message) (*Command, error) {
	if p.decoder == nil {
		return nil, fmt.Errorf("%w: ParticipantConfig.Registry is required to decode commands", ErrInvalidConfig)
	}
	var env commandEnvelope
	name, err := p.decoder.Decode(msg.Payload, &env)
	if err != nil {
		return nil, err
	}
	if name != CommandType {
		return nil, fmt.Errorf("%w: got a %s on the command topic", errNotEnvelope, name)
	}
	id, err := uuid.Parse(env.SagaID)
	if err != nil {
		return nil, fmt.Errorf("%w: saga_id %q: %v", errNotEnvelope, env.SagaID, err)
	}
	return &Command{SagaID: id, SagaType: env.SagaType, Step: env.Step, StepName: env.StepName, Attempt: env.Attempt,
		Compensation: env.Compensation, Name: env.Command, ReplyTopic: env.ReplyTopic, PayloadType: env.PayloadType,
		Payload: env.Payload, MessageID: msg.UUID, CorrelationID: msg.Metadata.Get(outbox.HeaderCorrelationID)}, nil
}

// Run consumes CommandTopic until ctx is done. It needs Brokers, Registry
// and CommandTopic.
func (p *Participant) Run(ctx context.Context) error {
	if len(p.cfg.Brokers) == 0 || p.decoder == nil || p.cfg.CommandTopic == "" {
		return fmt.Errorf("%w: Participant.Run needs Brokers, Registry and CommandTopic", ErrInvalidConfig)
	}
	p.batch = newBatcher(batchWorkers, p.cfg.Batch, p.processBatch)
	stop := p.batch.start(ctx, batchWorkers)
	defer stop() // after the router: its handlers wait on the batcher
	if p.cfg.Retention > 0 {
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() { runCleaner(ctx, p.cfg.Pool, p.cfg.Retention, p.cfg.CleanupInterval, p.log) })
	}
	return runRouter(ctx, consumeConfig{Brokers: p.cfg.Brokers, ConsumerGroup: p.cfg.ConsumerGroup, Topic: p.cfg.CommandTopic,
		Sarama: p.cfg.OverwriteSaramaConfig, NackResendSleep: DefaultNackResendSleep, Logger: p.cfg.Logger,
		Name: "saga_commands_" + p.cfg.Name}, p.HandleMessage)
}
