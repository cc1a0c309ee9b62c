#!/usr/bin/env bash
# Regenerates shared/pb/*_pb2*.py(i) from protos/. Output is deterministic, so a test can compare.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m grpc_tools.protoc -Ishared/pb=protos \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  shared/pb/voicebridge.proto
