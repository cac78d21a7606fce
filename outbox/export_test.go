package outbox

// SetTestHookBeforeProduce makes every worker of r call f after it fetched a
// batch and before it produces it (call it before Run): a test blocks f to
// pause a relay mid-batch.
func SetTestHookBeforeProduce(r *Relay, f func()) { r.testHookBeforeProduce = f }
