// Package platform is the plumbing the reference services share, so that each
// service's code is about its domain:
//
//   - config: read a service's documented Config struct from the environment,
//     reporting every bad variable at once.
//   - httpx: JSON errors ({"error": "...", "code": "..."}), strict JSON
//     request decoding, /healthz and /readyz, Prometheus metrics, request
//     logs, the OpenAPI document, and an HTTP server that shuts down
//     gracefully.
//   - auth: JWTs signed with Ed25519 (EdDSA) by userservice, a JWKS document,
//     and a verifier the other services use through that document.
//   - ratelimit: per-key token buckets (login attempts).
package platform
