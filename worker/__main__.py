"""`python -m worker`: run the stream loop until SIGTERM/SIGINT (WORKER_PROCESSES=N: N of them
under one supervisor). `--check`: liveness probe (exit 0 when this worker's heartbeat key is
fresh). `--burst`: drain the stream, then exit.

Settings are read before anything imports prometheus_client: with several processes, the
multiprocess mode must be chosen first (worker/supervisor.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from shared import logs
from shared.config import ConfigError
from worker.settings import WorkerSettings


def _run(main_coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main_coro)
    return uvloop.run(main_coro)


def run_one(
    settings: WorkerSettings,
    name: str | None = None,
    burst: bool = False,
    serve_metrics: bool = True,
) -> int:
    from worker.heartbeat import NoFreeName
    from worker.service import MetricsPortTaken, serve, start_metrics

    try:
        if serve_metrics:
            start_metrics(settings)
        return _run(serve(settings, burst=burst, name=name))
    except (MetricsPortTaken, NoFreeName) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--check", action="store_true", help="liveness probe, then exit")
    parser.add_argument("--burst", action="store_true", help="drain the stream, then exit")
    args = parser.parse_args()
    try:
        settings = WorkerSettings.from_env()
    except ConfigError as exc:
        print(f"worker: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    if args.check:
        from worker.service import check

        return _run(check(settings))
    if settings.processes > 1 and not args.burst:
        from worker.supervisor import run_processes

        return run_processes(settings)
    return run_one(settings, burst=args.burst)


if __name__ == "__main__":
    sys.exit(main())
