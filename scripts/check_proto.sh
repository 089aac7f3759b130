#!/usr/bin/env bash
# Fail when the committed stubs differ from freshly generated ones.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
"$root/scripts/gen_proto.sh" "$tmp"
if ! diff -r -x '__pycache__' -x '__init__.py' "$tmp/fedops_common/proto" "$root/fedops_common/proto"; then
  echo "Generated gRPC stubs are stale: run 'make proto' and commit the result." >&2
  exit 1
fi
echo "Generated gRPC stubs are up to date."
