#!/usr/bin/env bash
# Fails when `go generate ./...` changes a generated file, i.e. when the
# committed generated code is stale. Compares only generated files (those
# with the standard "Code generated ... DO NOT EDIT." header), so it also
# works in a working tree with other uncommitted changes.
set -euo pipefail
gen_files() { grep -rlE --include='*.go' '^// Code generated .* DO NOT EDIT\.$' . | sort; }
before=$(gen_files | xargs -r sha256sum)
go generate ./...
after=$(gen_files | xargs -r sha256sum)
if [ "$before" != "$after" ]; then
	diff <(echo "$before") <(echo "$after") || true
	echo "generated code is stale: run go generate ./... and commit the result"
	exit 1
fi
echo "generated code is up to date"
