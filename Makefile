# Everything a developer or CI runs. `make help` lists the targets.
GO ?= go
PKGS := ./...

.PHONY: help test lint vet tidy-check fmt-check generate-check bench bench-saga bench-compare bench-shop demo migrate compose-secrets console screenshot

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

test: ## run every test with the race detector against the local Postgres
	$(GO) test -race -count=1 -timeout 30m $(PKGS)

.PHONY: test-loaded
test-loaded: ## make test with every core kept busy by a background spinner (internal/cmd/spin), stopped however it ends
	@set -e; dir=$$(mktemp -d); \
	$(GO) build -o $$dir/spin ./internal/cmd/spin; \
	$$dir/spin & spin=$$!; \
	trap 'kill $$spin 2>/dev/null || true; wait $$spin 2>/dev/null || true; rm -rf $$dir; echo "test-loaded: spinner stopped"' EXIT; \
	trap 'exit 130' INT TERM; \
	echo "test-loaded: spinner (pid $$spin) on $$(nproc) cores"; \
	$(MAKE) --no-print-directory test

.PHONY: test-crash
test-crash: ## the crash test: the services as processes, killed, frozen and cut off from Postgres under load; a few minutes
	SAGABOX_CRASH=1 $(GO) test -count=1 -v -timeout 15m -run TestCrashedShopSettlesWithEveryInvariant ./internal/crashtest

lint: fmt-check vet generate-check tidy-check ## gofmt, go vet, staticcheck, generated code and go.mod up to date
	$(GO) tool staticcheck $(PKGS)

tidy-check: ## fail when go.mod or go.sum is not tidy
	$(GO) mod tidy -diff

vet: ## go vet
	$(GO) vet $(PKGS)

fmt-check: ## fail when a file is not gofmt'ed
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

generate-check: ## fail when go generate changes a committed generated file
	bash scripts/generate-check.sh

bench: ## outbox relay benchmark: sagabox vs watermill forwarder vs ceiling (see BENCHMARKS.md)
	$(GO) run ./cmd/outboxbench

bench-saga: ## three-step saga end to end (see BENCHMARKS.md)
	$(GO) run ./cmd/sagabench

bench-compare: ## outboxbench and sagabench of OLD (a commit) and of the work tree, side by side: make bench-compare OLD=<commit>
	bash scripts/bench-compare.sh $(OLD)

bench-shop: ## the shop's capacity over HTTP: open-loop rates, highest with p99 < 500 ms (see BENCHMARKS.md)
	$(GO) run ./cmd/shopbench -search

demo: ## the embedded shop: three services, in-process Kafka and Schema Registry, a scripted scenario
	$(GO) run ./examples/shop -scenario

compose-secrets: ## create the docker compose secrets, readable by the services (deploy/secrets/README.md)
	sh deploy/secrets/create.sh

console: ## the operator console for DATABASE_URL on 127.0.0.1:8090
	$(GO) run ./cmd/sagabox console

screenshot: ## refresh docs/console.png: the browser test drives headless Chromium over a real shop and takes it
	SAGABOX_SCREENSHOT=$(CURDIR)/docs/console.png $(GO) test -count=1 -run TestBrowser -v ./console

migrate: ## apply the outbox and saga migrations to DATABASE_URL
	$(GO) run ./cmd/sagabox migrate
