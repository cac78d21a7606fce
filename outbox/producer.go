package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/IBM/sarama"
)

// Why not watermill-kafka's publisher or Sarama's SyncProducer: the relay
// must put a whole batch on the wire as one produce request per broker and
// know, per partition, whether it landed (see BENCHMARKS.md: watermill-kafka's
// publisher makes one round trip per message). So the relay goes one level
// down and speaks the produce protocol through Sarama's client and broker
// types, with Kafka's idempotent producer (producer ID and per-partition
// sequence numbers) so that a retried request is never appended twice.
//
// Order: each partition's records go into one record batch, which the broker
// appends whole or not at all, and the relay waits for the answer before it
// sends that partition anything else. Records of one key share a partition,
// so they land in id order or not at all.

// record is one message on its way to Kafka.
type record struct {
	topic   string
	key     []byte
	value   []byte
	headers []sarama.RecordHeader
}

func (r *record) size() int {
	n := len(r.key) + len(r.value) + 64
	for _, h := range r.headers {
		n += len(h.Key) + len(h.Value) + 10
	}
	return n
}

// produceError is the outcome of a record that did not land.
type produceError struct {
	err       error
	permanent bool // retrying cannot help: park the message
}

func (e *produceError) Error() string { return e.err.Error() }
func (e *produceError) Unwrap() error { return e.err }

type topicPartition struct {
	topic     string
	partition int32
}

// batchProducer sends batches of records with the idempotent produce protocol.
// It is used by one relay goroutine at a time.
type batchProducer struct {
	client   sarama.Client
	conf     *sarama.Config
	log      *slog.Logger
	maxBatch int // bytes per record batch, below the broker's max.message.bytes
	retries  int // in-call retries of the same batch (same sequence numbers)
	backoff  time.Duration

	mu    sync.Mutex // guards pid, epoch, seqs against concurrent per-broker sends
	pid   int64
	epoch int16
	seqs  map[topicPartition]int32

	partitioners map[string]sarama.Partitioner
	// brokers are the broker connections this producer used, closed by the
	// relay when it stops (closeClient). Guarded by mu.
	brokers map[*sarama.Broker]bool
}

func newBatchProducer(client sarama.Client, conf *sarama.Config, maxBatch, retries int, backoff time.Duration, log *slog.Logger) *batchProducer {
	return &batchProducer{
		client: client, conf: conf, log: log, maxBatch: maxBatch, retries: retries, backoff: backoff,
		pid: -1, seqs: map[topicPartition]int32{}, partitioners: map[string]sarama.Partitioner{},
		brokers: map[*sarama.Broker]bool{},
	}
}

// resetProducerID forgets the producer ID, so the next send asks for a new
// one and starts every partition's sequence at 0. Done after any outcome
// that leaves the broker's view of our sequences unknown.
func (p *batchProducer) resetProducerID() {
	p.mu.Lock()
	p.pid = -1
	p.seqs = map[topicPartition]int32{}
	p.mu.Unlock()
}

func (p *batchProducer) ensureProducerID() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pid >= 0 {
		return nil
	}
	b := p.client.LeastLoadedBroker()
	if b == nil {
		return errors.New("no broker reachable")
	}
	p.brokers[b] = true
	_ = b.Open(p.conf)
	resp, err := b.InitProducerID(&sarama.InitProducerIDRequest{Version: 1})
	if err != nil {
		_ = b.Close()
		return fmt.Errorf("init producer id: %w", err)
	}
	if !errors.Is(resp.Err, sarama.ErrNoError) {
		return fmt.Errorf("init producer id: %w", resp.Err)
	}
	p.pid, p.epoch = resp.ProducerID, resp.ProducerEpoch
	p.seqs = map[topicPartition]int32{}
	return nil
}

func (p *batchProducer) partition(topic string, key []byte) (int32, error) {
	parts, err := p.client.Partitions(topic)
	if err != nil {
		return 0, err
	}
	if len(parts) == 0 {
		return 0, sarama.ErrLeaderNotAvailable
	}
	pt, ok := p.partitioners[topic]
	if !ok {
		// Sarama's default (FNV-1a hash of the key), the same partitioner
		// watermill-kafka's publisher uses, so both agree on where a key
		// lives.
		pt = sarama.NewHashPartitioner(topic)
		p.partitioners[topic] = pt
	}
	msg := &sarama.ProducerMessage{Topic: topic}
	if key != nil {
		msg.Key = sarama.ByteEncoder(key)
	}
	return pt.Partition(msg, int32(len(parts)))
}

// chunk is the records of one partition that go into one record batch.
type chunk struct {
	tp   topicPartition
	idx  []int // positions in the produce call's records
	size int
}

// produce sends recs and returns, per record, nil when it landed or a
// *produceError. It returns when every record has an outcome or ctx ends.
func (p *batchProducer) produce(ctx context.Context, recs []record) []error {
	out := make([]error, len(recs))
	fail := func(i int, err error, permanent bool) { out[i] = &produceError{err: err, permanent: permanent} }

	// Group by partition, keeping id order within each, and split a
	// partition's records into chunks that fit one record batch.
	var order []topicPartition
	chunks := map[topicPartition][]*chunk{}
	for i := range recs {
		r := &recs[i]
		if r.size() > p.maxBatch {
			fail(i, fmt.Errorf("%w: %d bytes, the limit is %d", sarama.ErrMessageSizeTooLarge, r.size(), p.maxBatch), true)
			continue
		}
		part, err := p.partition(r.topic, r.key)
		if err != nil {
			fail(i, fmt.Errorf("topic %s: %w", r.topic, err), false)
			continue
		}
		tp := topicPartition{r.topic, part}
		cs := chunks[tp]
		if len(cs) == 0 {
			order = append(order, tp)
		}
		if len(cs) == 0 || cs[len(cs)-1].size+r.size() > p.maxBatch {
			cs = append(cs, &chunk{tp: tp})
			chunks[tp] = cs
		}
		c := cs[len(cs)-1]
		c.idx = append(c.idx, i)
		c.size += r.size()
	}

	// Round k sends the k-th chunk of every partition, one request per
	// leader, concurrently. A partition whose chunk failed sends nothing
	// more in this call, so nothing overtakes it.
	failed := map[topicPartition]bool{}
	for round := 0; ; round++ {
		var batch []*chunk
		for _, tp := range order {
			cs := chunks[tp]
			if round >= len(cs) {
				continue
			}
			if failed[tp] {
				for _, i := range cs[round].idx {
					fail(i, errors.New("an earlier batch of the same partition failed"), false)
				}
				continue
			}
			batch = append(batch, cs[round])
		}
		if len(batch) == 0 {
			break
		}
		for c, err := range p.sendRound(ctx, recs, batch) {
			if err == nil {
				continue
			}
			failed[c.tp] = true
			var pe *produceError
			if errors.As(err, &pe) && pe.permanent && len(c.idx) > 1 {
				// Something in the batch is poison (too large, invalid):
				// find it by sending the records one by one, so the rest
				// still go out, in order.
				failed[c.tp] = p.isolate(ctx, recs, c, out)
				continue
			}
			for _, i := range c.idx {
				out[i] = err
			}
		}
	}
	return out
}

// isolate sends a chunk's records one by one; it reports whether a record
// failed in a retriable way (which holds back the rest of the partition).
func (p *batchProducer) isolate(ctx context.Context, recs []record, c *chunk, out []error) (blocked bool) {
	for _, i := range c.idx {
		if blocked {
			out[i] = &produceError{err: errors.New("an earlier record of the same partition failed"), permanent: false}
			continue
		}
		single := &chunk{tp: c.tp, idx: []int{i}, size: recs[i].size()}
		for _, err := range p.sendRound(ctx, recs, []*chunk{single}) {
			out[i] = err
			var pe *produceError
			if err != nil && !(errors.As(err, &pe) && pe.permanent) {
				blocked = true
			}
		}
	}
	return blocked
}

// sendRound sends chunks of distinct partitions, one request per leader, and
// retries what failed in a retriable way with the same sequence numbers.
func (p *batchProducer) sendRound(ctx context.Context, recs []record, batch []*chunk) map[*chunk]error {
	result := map[*chunk]error{}
	pending := batch
	for attempt := 0; len(pending) > 0; attempt++ {
		if err := p.ensureProducerID(); err != nil {
			for _, c := range pending {
				result[c] = &produceError{err: err}
			}
			return result
		}
		errs := p.sendOnce(recs, pending)
		var retry []*chunk
		resetPID := false
		for _, c := range pending {
			err := errs[c]
			switch {
			case err == nil:
				result[c] = nil
			case isPermanent(err):
				result[c] = &produceError{err: err, permanent: true}
				resetPID = true
			default:
				if errors.Is(err, sarama.ErrOutOfOrderSequenceNumber) || errors.Is(err, sarama.ErrUnknownProducerID) ||
					errors.Is(err, sarama.ErrInvalidProducerEpoch) {
					resetPID = true
				}
				result[c] = &produceError{err: err}
				retry = append(retry, c)
			}
		}
		if resetPID {
			p.resetProducerID()
		}
		if len(retry) == 0 || attempt >= p.retries || ctx.Err() != nil {
			if len(retry) > 0 {
				// We do not know whether the broker appended them: a new
				// producer ID keeps the next batch from being refused as
				// out of sequence. A later retry may duplicate them
				// (at-least-once).
				p.resetProducerID()
			}
			return result
		}
		_ = p.client.RefreshMetadata(topicsOf(retry)...)
		select {
		case <-ctx.Done():
		case <-time.After(p.backoff << attempt):
		}
		pending = retry
	}
	return result
}

func topicsOf(cs []*chunk) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range cs {
		if !seen[c.tp.topic] {
			seen[c.tp.topic] = true
			out = append(out, c.tp.topic)
		}
	}
	return out
}

// sendOnce builds one produce request per leader and sends them concurrently.
func (p *batchProducer) sendOnce(recs []record, batch []*chunk) map[*chunk]error {
	errs := make(map[*chunk]error, len(batch))
	byBroker := map[*sarama.Broker][]*chunk{}
	for _, c := range batch {
		b, err := p.client.Leader(c.tp.topic, c.tp.partition)
		if err != nil {
			errs[c] = err
			continue
		}
		byBroker[b] = append(byBroker[b], c)
	}
	p.mu.Lock()
	for b := range byBroker {
		p.brokers[b] = true
	}
	pid, epoch := p.pid, p.epoch
	type sent struct {
		c   *chunk
		seq int32
	}
	reqs := map[*sarama.Broker]*sarama.ProduceRequest{}
	var all []sent
	now := time.Now().Truncate(time.Millisecond)
	for b, cs := range byBroker {
		req := &sarama.ProduceRequest{
			RequiredAcks: sarama.WaitForAll,
			Timeout:      int32(p.conf.Producer.Timeout / time.Millisecond),
			Version:      7,
		}
		for _, c := range cs {
			seq := p.seqs[c.tp]
			rb := &sarama.RecordBatch{
				Version: 2, Codec: p.conf.Producer.Compression, CompressionLevel: p.conf.Producer.CompressionLevel,
				FirstTimestamp: now, MaxTimestamp: now,
				ProducerID: pid, ProducerEpoch: epoch, FirstSequence: seq,
				LastOffsetDelta: int32(len(c.idx) - 1),
			}
			for j, i := range c.idx {
				r := &recs[i]
				rec := &sarama.Record{Key: r.key, Value: r.value, OffsetDelta: int64(j)}
				if len(r.headers) > 0 {
					rec.Headers = make([]*sarama.RecordHeader, len(r.headers))
					for h := range r.headers {
						rec.Headers[h] = &r.headers[h]
					}
				}
				rb.Records = append(rb.Records, rec)
			}
			req.AddBatch(c.tp.topic, c.tp.partition, rb)
			all = append(all, sent{c, seq})
		}
		reqs[b] = req
	}
	p.mu.Unlock()

	var wg sync.WaitGroup
	var mu sync.Mutex
	for b, req := range reqs {
		wg.Add(1)
		go func(b *sarama.Broker, req *sarama.ProduceRequest, cs []*chunk) {
			defer wg.Done()
			resp, err := b.Produce(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				// The connection is broken or timed out: close it so the
				// next attempt reconnects, and let metadata be refreshed.
				_ = b.Close()
				for _, c := range cs {
					errs[c] = fmt.Errorf("produce to broker %d: %w", b.ID(), err)
				}
				return
			}
			for _, c := range cs {
				blk := resp.GetBlock(c.tp.topic, c.tp.partition)
				switch {
				case blk == nil:
					errs[c] = errors.New("broker answered without this partition")
				case errors.Is(blk.Err, sarama.ErrNoError), errors.Is(blk.Err, sarama.ErrDuplicateSequenceNumber):
					errs[c] = nil
				default:
					errs[c] = blk.Err
				}
			}
		}(b, req, byBroker[b])
	}
	wg.Wait()

	p.mu.Lock()
	for _, s := range all {
		if errs[s.c] == nil && p.pid == pid {
			p.seqs[s.c.tp] = s.seq + int32(len(s.c.idx))
		}
	}
	p.mu.Unlock()
	return errs
}

// isPermanent reports broker answers that retrying the same records cannot
// change.
func isPermanent(err error) bool {
	var kerr sarama.KError
	if !errors.As(err, &kerr) {
		return false
	}
	switch kerr {
	case sarama.ErrMessageSizeTooLarge, sarama.ErrInvalidMessage, sarama.ErrInvalidMessageSize,
		sarama.ErrInvalidRecord, sarama.ErrInvalidTimestamp, sarama.ErrInvalidTopic,
		sarama.ErrTopicAuthorizationFailed, sarama.ErrClusterAuthorizationFailed,
		sarama.ErrUnsupportedForMessageFormat, sarama.ErrUnsupportedVersion:
		return true
	}
	return false
}
