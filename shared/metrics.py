"""Prometheus helpers. The edge runs several gunicorn processes, so it uses prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `python -m edge` before the fork); a worker
is one process and serves its own registry."""

from __future__ import annotations

import os
import shutil
import tempfile

# prometheus_client is imported inside the functions: it picks its multiprocess mode when first
# imported, which must happen after prepare_multiprocess_dir() has set the variable.

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Turn latency buckets: callers notice past ~200 ms; Twilio gives up at 15 s.
LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    8.0,
    13.0,
)


def prepare_multiprocess_dir() -> str:
    """Before forking: a fresh directory for the processes' metric files."""
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        os.makedirs(existing, exist_ok=True)
        for name in os.listdir(existing):  # stale files from an earlier run would add up
            os.remove(os.path.join(existing, name))
        return existing
    path = tempfile.mkdtemp(prefix="voicebridge-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def render_multiprocess() -> tuple[bytes, str]:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def remove_multiprocess_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
