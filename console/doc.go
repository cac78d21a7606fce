// Package console is sagabox's operator console: an http.Handler, like
// River UI, over one service database, showing its sagas and its outbox and
// giving the buttons to act on them.
//
//	c, err := console.New(console.Config{Pool: pool, AuthToken: os.Getenv(console.TokenEnv)})
//	mux.Handle("/console/", http.StripPrefix("/console", c)) // with Config.Prefix "/console"
//	go c.Run(ctx) // optional: samples the outbox's publish rate in the background
//
// go run ./cmd/sagabox console serves it alone on 127.0.0.1:8090.
//
// Pages: the sagas (counts per status, filters by status, type, "stuck
// past its deadline", "failed" and "unchanged for", keyset-paged newest
// first), one saga (its timeline of every attempt, data, failure and the
// definition drawn as an SVG diagram with the steps taken, the current one
// and the failed one marked, and retry and abort), and the outbox (pending
// per topic, oldest pending age, publish rate chart, parked messages with
// retry and discard). Pages refresh themselves every Config.Refresh.
//
// Why it looks the way it does:
//   - Server-rendered html/template pages with a little CSS and script of
//     our own, embedded in the binary: no CDN, no build step.
//   - Retry and abort go through saga.Admin, which records the request in
//     the saga's row and history; the saga's orchestrator carries it out at
//     its next timer poll, with the definition's Go type the console does
//     not have. The diagram comes from Config.Definitions, or the
//     definition orchestrators record in sagabox.saga_definitions when
//     they start, or else the saga's history.
//   - It adds nothing to the hot paths: no index, trigger or write on the
//     sagas or outbox tables. The publish rate is read from Postgres's own
//     delete counter of the outbox table (pg_stat_user_tables), sampled.
//
// Safety: every state change is a POST with a CSRF token, behind a
// confirmation page, logged with who (the name the operator gives, and the
// address) and why, and recorded in the saga's history. With
// Config.AuthToken set, every request needs the token (bearer or sign-in
// cookie, compared in constant time); CheckListen refuses a non-loopback
// address without one. Bad input gets a 4xx page that says what is wrong,
// never a 500.
package console
