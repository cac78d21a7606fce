package saga

import "context"

// ProcessBatch runs cmds as Run's batcher does: in one transaction.
func (p *Participant) ProcessBatch(ctx context.Context, cmds []*Command) []error {
	return p.processBatch(ctx, cmds)
}

// HandleReplies applies replies as Run's batcher does: in one transaction.
func (o *Orchestrator[D]) HandleReplies(ctx context.Context, replies []*Reply) []error {
	items := make([]replyItem, len(replies))
	for i, r := range replies {
		items[i] = replyItem{r: r, causation: "test"}
	}
	return o.handleReplies(ctx, items)
}
