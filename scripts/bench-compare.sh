#!/usr/bin/env bash
# Side-by-side benchmark of two commits on one machine, in one run, the
# way BENCHMARKS.md asks for any change on a hot path:
#
#   bash scripts/bench-compare.sh <old-commit> [<new-commit>]   # new defaults to the work tree
#
# It builds cmd/outboxbench and cmd/sagabench of both into a temporary
# directory first (so compiling does not overlap a run), then runs them in
# turns: outboxbench old, new (sagabox and the ceiling, one throughput run
# each), then sagabench old, new, old, new (unpaced, then paced at a quarter
# and at half of the capacity each measured). Stop everything else on the
# machine first: on two shared cores single runs spread by +-15 %, and only
# ratios measured side by side mean anything. Extra flags for sagabench go
# in SAGABENCH_FLAGS (for example "-sagas 5000"), for outboxbench in
# OUTBOXBENCH_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bench-compare.sh <old-commit> [<new-commit>]}
new=${2:-}
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; [ -n "$new" ] && git worktree remove --force "$tmp/new" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

build() { # build <label> <dir>
	(cd "$2" && go build -o "$tmp/bin/$1-outboxbench" ./cmd/outboxbench && go build -o "$tmp/bin/$1-sagabench" ./cmd/sagabench)
}
git worktree add -q --detach "$tmp/old" "$old"
build old "$tmp/old"
if [ -n "$new" ]; then
	git worktree add -q --detach "$tmp/new" "$new"
	build new "$tmp/new"
	newlabel=$(git rev-parse --short "$new")
else
	build new .
	newlabel="work tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'))"
fi
echo "bench-compare: old = $(git rev-parse --short "$old"), new = $newlabel, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"

for who in old new; do
	echo "== outboxbench $who"
	# shellcheck disable=SC2086
	"$tmp/bin/$who-outboxbench" -systems sagabox,ceiling -repeat 1 ${OUTBOXBENCH_FLAGS:-} 2>&1 | grep -E '^(system=|#)' || true
done
for round in 1 2; do
	for who in old new; do
		echo "== sagabench $who (round $round)"
		# shellcheck disable=SC2086
		"$tmp/bin/$who-sagabench" ${SAGABENCH_FLAGS:-} 2>&1 | grep -E '^system=|CPU per saga|hops p50' || true
	done
done
