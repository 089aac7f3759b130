#!/usr/bin/env bash
# Regenerate the Python stubs of proto/ into the source tree (one command, reproducible).
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
python -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" \
  "$root"/proto/fedops_common/proto/*.proto
