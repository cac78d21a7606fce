// Package sagabox is the one way in: a Client owns a service's messaging
// runtime (the outbox writer and relay, the Avro codec, the schema
// registration) and runs the saga orchestrators, participants and event
// consumers attached to it, the way river.NewClient owns a River
// deployment.
//
// Why a client: every service that takes part in sagas needs the same
// pieces wired the same way: the codec must know the saga envelopes, the
// writer must wake the relay, the schemas must be stored for the relay and
// registered before the first publish, and on shutdown the consumers must
// stop before the relay drains, or the replies they wrote last wait in the
// outbox until the next start. Written by hand, that is five constructors
// and the same five fields repeated in each config; the client does it once.
//
//	client, err := sagabox.NewClient(pool, sagabox.Config{
//		Brokers: brokers, RegistryURL: registryURL, Schemas: schemas.All(),
//	})
//	if err := client.Migrate(ctx); err != nil { ... }
//	orders, err := saga.NewOrchestrator(client, saga.Config{ReplyTopic: "order.saga.replies"}, orderSagaV1, orderSagaV2)
//	_, err = saga.NewParticipant(client, saga.ParticipantConfig{Name: "catalog", CommandTopic: "catalog.commands",
//		Handlers: []saga.Handler{saga.HandleCommand("reserve_stock", reserve)}})
//	err = client.Run(ctx) // until ctx is done; then consumers stop, the relay drains
//
// The lower-level packages stay usable alone: outbox for a service that only
// publishes events (outbox.NewWriter, outbox.NewRelay), saga for its
// definitions and its operator API (saga.Admin).
//
// Why a root package and not a part of outbox or saga: the client wires
// both, and outbox must not depend on saga. saga declares what it needs from
// the client (saga.Runtime), where it is used, so saga does not import this
// package either, and its tests can provide their own Runtime.
package sagabox
