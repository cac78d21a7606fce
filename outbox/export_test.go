package outbox

// SetTestHookBeforeProduce makes every worker of r call f after it fetched a
// batch and before it produces it (call it before Run): a test blocks f to
// pause a relay mid-batch.
func SetTestHookBeforeProduce(r *Relay, f func()) { r.testHookBeforeProduce = f }

// SetTestHookFetch makes every cycle of r call f with how many shards it
// fetched from and how many rows it got (call it before Run).
func SetTestHookFetch(r *Relay, f func(shards, rows int)) { r.testHookFetch = f }
