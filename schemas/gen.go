package schemas

// The Go types in shop.go are generated from the .avsc files by hamba/avro's
// generator, pinned in go.mod as a tool. -encoders gives every type a
// Schema() method, which is how outbox.Codec infers Message.Type. Run
// `go generate ./schemas/` after editing a schema and commit the result;
// `make lint` fails when shop.go is stale.
//
//go:generate go tool avrogen -pkg schemas -o shop.go -encoders -tags json:snake order_created.avsc order_approved.avsc order_cancelled.avsc reserve_stock.avsc release_stock.avsc stock_reserved.avsc debit_credit.avsc refund_credit.avsc credit_debited.avsc
