package schemas

// The order saga's contract between orderservice (the orchestrator) and
// its participants: which command goes to which topic with which payload,
// and what a successful reply carries. A command or reply is its payload
// record on Kafka (sagabox.saga.Empty for "(none)"), the saga metadata in
// the saga package's headers; the payloads are the types of this package.
//
//	command         topic             payload       reply payload   compensation of
//	reserve_stock   catalog.commands  ReserveStock  StockReserved
//	release_stock   catalog.commands  ReleaseStock  (none)          reserve_stock
//	debit_credit    user.commands     DebitCredit   CreditDebited
//	refund_credit   user.commands     RefundCredit  (none)          debit_credit
//
// A business "no" (insufficient stock or credit, unknown SKU or user) is a
// REJECTED reply whose reason says why; the saga then compensates.
const (
	TopicCatalogCommands = "catalog.commands"
	TopicUserCommands    = "user.commands"

	CommandReserveStock = "reserve_stock"
	CommandReleaseStock = "release_stock"
	CommandDebitCredit  = "debit_credit"
	CommandRefundCredit = "refund_credit"
)
