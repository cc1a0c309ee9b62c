"""`python -m worker`: run the stream loop until SIGTERM/SIGINT. `--check`: liveness probe
(exit 0 when this worker's heartbeat key is fresh)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from prometheus_client import start_http_server

from shared import keys, logs
from shared.config import ConfigError
from shared.redis_conn import connect
from worker.botpress_client import BotpressClient
from worker.replies import ReplySender
from worker.settings import WorkerSettings
from worker.stream_loop import StreamLoop
from worker.turns import TurnHandler

log = logging.getLogger("worker")


async def serve(settings: WorkerSettings, burst: bool = False) -> int:
    redis = connect(settings.redis_url, socket_timeout_s=5.0)
    bot = BotpressClient(
        settings.chat_url, settings.encryption_key.value, listen_keep_s=settings.listen_keep_s
    )
    sender = ReplySender(settings.grpc_token.value, settings.deliver_timeout_ms / 1000)
    loop = StreamLoop(settings, redis, TurnHandler(settings, redis, bot), sender)
    if settings.metrics_port:
        # prometheus_client serves from its own thread; the event loop never blocks on a scrape.
        start_http_server(settings.metrics_port)
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, loop.stop)
    log.info(
        "worker %s reading %s as group %s; bot at %s",
        settings.name,
        keys.TURN_STREAM,
        keys.WORKER_GROUP,
        settings.chat_url,
    )
    try:
        await loop.run(burst=burst)
    finally:
        await sender.aclose()
        await bot.aclose()
        await redis.aclose()
    log.info("worker %s stopped after %d turns", settings.name, loop.turns_done)
    return 0


async def check(settings: WorkerSettings) -> int:
    redis = connect(settings.redis_url)
    try:
        alive = await redis.exists(keys.worker_alive(settings.name))
    finally:
        await redis.aclose()
    print("alive" if alive else "no heartbeat")
    return 0 if alive else 1


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
    main_coro = check(settings) if args.check else serve(settings, burst=args.burst)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main_coro)
    return uvloop.run(main_coro)


if __name__ == "__main__":
    sys.exit(main())
