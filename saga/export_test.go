package saga

import "context"

// ProcessBatch runs cmds as Run's batcher does: in one transaction.
func (p *Participant) ProcessBatch(ctx context.Context, cmds []*Command) []error {
	return p.processBatch(ctx, cmds)
}
