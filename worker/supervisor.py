"""WORKER_PROCESSES=N: N worker processes from one command, one metrics endpoint for all.

As EDGE_WORKERS does for the edge: one box's cores are used without hand-made unit files. Each
child is a full worker (its own consumer name, event loop and clients), started with the
`spawn` method so no event loop, socket or gRPC state crosses a fork. A child that dies is
started again after CHILD_RESTART_S; SIGTERM/SIGINT are passed on, and each child drains its
turns within SHUTDOWN_GRACE_S.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import threading
import time

from shared import logs
from shared.metrics import mark_process_dead, prepare_multiprocess_dir, remove_multiprocess_dir
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

CHILD_RESTART_S = 1.0
# Beyond a child's own grace: how long a stopping supervisor waits before SIGKILL.
STOP_MARGIN_S = 5.0
POLL_S = 0.2


def child_name(settings: WorkerSettings, index: int) -> str | None:
    """WORKER_NAME=w → w-0, w-1, …; unset → each child claims a free slot itself."""
    return f"{settings.name}-{index}" if settings.name else None


def _child_main(index: int) -> None:  # runs in the spawned child
    from worker.__main__ import run_one

    settings = WorkerSettings.from_env()
    logs.configure(settings.log_level)
    sys.exit(run_one(settings, name=child_name(settings, index), serve_metrics=False))


def run_processes(settings: WorkerSettings) -> int:
    metrics_dir = prepare_multiprocess_dir()  # before any child imports prometheus_client
    from prometheus_client import CollectorRegistry, multiprocess

    from worker.service import MetricsPortTaken, start_metrics

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    try:
        port = start_metrics(settings, registry)
    except MetricsPortTaken as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    context = multiprocessing.get_context("spawn")
    children: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = threading.Event()

    def start(index: int) -> None:
        child = context.Process(target=_child_main, args=(index,), name=f"worker-{index}")
        child.start()
        children[index] = child

    def stop(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(settings.processes):
        start(index)
    log.info("supervising %d worker processes; metrics on port %d", settings.processes, port)
    restart_at: dict[int, float] = {}
    while not stopping.is_set():
        for index, child in list(children.items()):
            if child.is_alive() or index in restart_at:
                continue
            mark_process_dead(child.pid or 0)
            log.warning("worker process %d exited with %s; restarting", index, child.exitcode)
            restart_at[index] = time.monotonic() + CHILD_RESTART_S
        for index, when in list(restart_at.items()):
            if time.monotonic() >= when:
                del restart_at[index]
                start(index)
        stopping.wait(POLL_S)
    for child in children.values():
        if child.is_alive() and child.pid:
            os.kill(child.pid, signal.SIGTERM)
    give_up = time.monotonic() + settings.shutdown_grace_s + STOP_MARGIN_S
    for child in children.values():
        child.join(max(give_up - time.monotonic(), 0.0))
        if child.is_alive():
            child.kill()
            child.join()
    remove_multiprocess_dir(metrics_dir)
    return 0
