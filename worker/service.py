"""One worker process: settings -> clients -> the stream loop and its helpers, in one function.

`serve` wires Redis, the Botpress client, the gRPC reply sender, the call store and the turn
handler, claims a consumer name, and runs the stream loop with recovery and the heartbeat
beside it. Shutdown order: stop reading, finish or hand back in-flight turns (SHUTDOWN_GRACE_S),
then stop taking over others' turns, then drop the liveness key, then close clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket

from prometheus_client import start_http_server
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.callstore import CallStore
from shared.redis_conn import connect
from worker.heartbeat import Heartbeat, claim_name, new_token
from worker.recovery import Recovery
from worker.replies import ReplySender
from worker.routing import RoutedTurns
from worker.settings import WorkerSettings
from worker.stream_loop import StreamLoop

log = logging.getLogger(__name__)

# Blocking stream reads wait READ_BLOCK_MS; the socket timeout must be longer (redis-py pitfall).
WORKER_SOCKET_TIMEOUT_S = 5.0


CLAIM_RETRY_FIRST_S = 0.1
CLAIM_RETRY_MAX_S = 1.0


class MetricsPortTaken(RuntimeError):
    """WORKER_METRICS_PORT was set to a port another process holds."""


def start_metrics(settings: WorkerSettings, registry: object | None = None) -> int:
    """Serve /metrics from a thread (a scrape never blocks the event loop); returns the port.

    The default port taken (another worker on this machine) → any free port, logged; a port
    the operator chose taken → MetricsPortTaken, which the entry point prints as one line."""
    if not settings.metrics_port:
        return 0
    extra = {"registry": registry} if registry is not None else {}
    try:
        server, _ = start_http_server(settings.metrics_port, **extra)  # type: ignore[arg-type]
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        if settings.metrics_port_set:
            raise MetricsPortTaken(
                f"WORKER_METRICS_PORT={settings.metrics_port} is already in use (another worker "
                "on this machine?): choose a free port, or 0 for no metrics endpoint"
            ) from None
        server, _ = start_http_server(0, **extra)  # type: ignore[arg-type]
        log.warning(
            "metrics port %d is taken (another worker on this machine?); metrics on port %d",
            settings.metrics_port,
            server.server_port,
        )
    else:
        log.info("metrics on port %d", server.server_port)
    return int(server.server_port)


async def _claim_when_redis_answers(redis: Redis, configured: str | None, token: str) -> str:
    """A worker started while Redis is down (or restarting) waits for it instead of exiting."""
    retry_s = CLAIM_RETRY_FIRST_S
    while True:
        try:
            return await claim_name(redis, configured, token)
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable at start, retrying in %.1fs: %s", retry_s, exc)
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, CLAIM_RETRY_MAX_S)


async def serve(
    settings: WorkerSettings,
    burst: bool = False,
    name: str | None = None,
    handle_signals: bool = True,
) -> int:
    redis = connect(settings.redis_url, socket_timeout_s=WORKER_SOCKET_TIMEOUT_S)
    sender = ReplySender(settings.grpc_token.value, settings.deliver_timeout_s)
    store = CallStore(redis)
    # One TurnHandler per ROUTES_FILE route ("default" without a file), one Botpress client
    # and quiet window per bot; each turn goes to its route's (worker/routing.py).
    handler = RoutedTurns(settings, redis, store, sender)
    token = new_token()
    try:
        consumer = await _claim_when_redis_answers(redis, name or settings.name, token)
        loop = StreamLoop(settings, redis, handler, consumer)
        if handle_signals:
            running = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                running.add_signal_handler(sig, loop.stop)
        heartbeat = Heartbeat(redis, loop, token)
        helpers = (
            []
            if burst
            else [
                asyncio.create_task(heartbeat.run()),
                asyncio.create_task(Recovery(settings, redis, loop, handler).run()),
                *(asyncio.create_task(window.run()) for window in handler.windows),
            ]
        )
        log.info(
            "worker %s reading %s as group %s; bot at %s",
            consumer,
            keys.TURN_STREAM,
            keys.WORKER_GROUP,
            ", ".join(handler.bots),
        )
        try:
            await loop.run(burst=burst)
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await handler.aclose()
            await heartbeat.release()
        log.info("worker %s stopped after %d turns", consumer, loop.turns_done)
    finally:
        await sender.aclose()
        await handler.close_clients()
        await redis.aclose()
    return 0


async def check(settings: WorkerSettings) -> int:
    """Liveness probe: this worker's heartbeat key is fresh (unnamed: any of this host's)."""
    redis = connect(settings.redis_url)
    try:
        if settings.name:
            alive = bool(await redis.exists(keys.worker_alive(settings.name)))
        else:
            pattern = keys.worker_alive(f"{socket.gethostname()}-*")
            alive = False
            async for _ in redis.scan_iter(match=pattern, count=1000):
                alive = True
                break
    finally:
        await redis.aclose()
    print("alive" if alive else "no heartbeat")
    return 0 if alive else 1
