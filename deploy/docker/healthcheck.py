#!/usr/bin/env python3
"""The image's HEALTHCHECK: one image runs three roles, so probe the one PID 1 is running.

  python -m edge    -> GET http://127.0.0.1:$EDGE_PORT/readyz   (Redis reachable, gRPC serving)
  python -m worker  -> python -m worker --check                (this worker's heartbeat is fresh)
  python -m botsim  -> GET http://127.0.0.1:<--port>/healthcheck/hello (default port 3100;
                       botsim serves the Chat API under any webhook id)

Exit 0 healthy, 1 unhealthy (Docker's contract). Standard library only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

EDGE_DEFAULT_PORT = 8080
BOTSIM_DEFAULT_PORT = 3100


def role_of(argv: list[str]) -> str | None:
    """The module after `-m` in a command line (`python -m worker` -> "worker")."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m":
            return argv[i + 1]
    return None


def probe_for(argv: list[str], environ: dict[str, str]) -> list[str] | str:
    """A URL to GET, or a command to run, that tells whether this role is healthy."""
    role = role_of(argv)
    if role == "edge":
        port = environ.get("EDGE_PORT") or str(EDGE_DEFAULT_PORT)
        return f"http://127.0.0.1:{port}/readyz"
    if role == "worker":
        return [sys.executable, "-m", "worker", "--check"]
    if role == "botsim":
        port = str(BOTSIM_DEFAULT_PORT)
        for i, arg in enumerate(argv):
            if arg == "--port" and i + 1 < len(argv):
                port = argv[i + 1]
            elif arg.startswith("--port="):
                port = arg.split("=", 1)[1]
        return f"http://127.0.0.1:{port}/healthcheck/hello"
    raise ValueError(f"no health probe for command {' '.join(argv)!r}")


def pid1_argv() -> list[str]:
    with open("/proc/1/cmdline", "rb") as f:
        return [part.decode() for part in f.read().split(b"\0") if part]


def main() -> int:
    try:
        probe = probe_for(pid1_argv(), dict(os.environ))
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    if isinstance(probe, list):
        try:
            return 0 if subprocess.run(probe, timeout=4).returncode == 0 else 1
        except subprocess.TimeoutExpired:
            print(f"healthcheck: {' '.join(probe)} timed out", file=sys.stderr)
            return 1
    try:
        with urllib.request.urlopen(probe, timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:  # URLError and HTTPError (503 from /readyz) are OSErrors
        print(f"healthcheck: {probe}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
