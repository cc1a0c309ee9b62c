"""A worker's name, its liveness key, and the stream gauges.

The consumer name is stable where WORKER_NAME sets it (a pod name). Unset, a worker takes the
lowest free `{hostname}-{i}` slot, claimed with SET NX on the slot's liveness key: two workers
started on one machine with no settings get different names (and so different pending lists),
and a restarted one gets a low index back once its old key has expired.

The liveness key is what other workers watch (worker/recovery.py): refreshed every
WORKER_HEARTBEAT_S, gone WORKER_ALIVE_TTL_S after a crash. `python -m worker --check` reads it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from worker import metrics
from worker.stream_loop import StreamLoop

log = logging.getLogger(__name__)

# Slots tried for an automatic name before giving up (a box never runs this many workers).
MAX_NAME_SLOTS = 1024
# Stream lag and pending are read every few heartbeats.
GAUGE_INTERVAL_S = 5.0


def slot_name(host: str, index: int) -> str:
    return f"{host}-{index}"


class NoFreeName(RuntimeError):
    pass


async def claim_name(redis: Redis, configured: str | None, token: str) -> str:
    """Our consumer name: `configured` as is, else the lowest free `{hostname}-{i}`."""
    if configured:
        holder = cast(bytes | None, await redis.get(keys.worker_alive(configured)))
        if holder is not None and holder.decode() != token:
            log.warning(
                "another live worker heartbeats as WORKER_NAME=%s; names must be unique",
                configured,
            )
        await redis.set(keys.worker_alive(configured), token, ex=keys.WORKER_ALIVE_TTL_S)
        return configured
    host = socket.gethostname()
    for index in range(MAX_NAME_SLOTS):
        name = slot_name(host, index)
        if await redis.set(keys.worker_alive(name), token, nx=True, ex=keys.WORKER_ALIVE_TTL_S):
            return name
    raise NoFreeName(f"all {MAX_NAME_SLOTS} worker names of {host} are taken: set WORKER_NAME")


def new_token() -> str:
    return secrets.token_hex(8)


class Heartbeat:
    def __init__(self, redis: Redis, loop: StreamLoop, token: str) -> None:
        self._redis = redis
        self._loop = loop
        self._token = token

    async def run(self) -> None:
        """Until cancelled, which the worker does only after its last turn is finished or
        handed back: a draining worker still owns its in-flight turns."""
        next_gauges = 0.0
        while True:
            try:
                await self._redis.set(
                    keys.worker_alive(self._loop.name), self._token, ex=keys.WORKER_ALIVE_TTL_S
                )
            except (RedisError, OSError):
                pass  # Redis down: nobody can take our turns either
            if time.monotonic() >= next_gauges:
                next_gauges = time.monotonic() + GAUGE_INTERVAL_S
                await self.observe_stream()
            await asyncio.sleep(keys.WORKER_HEARTBEAT_S)

    async def release(self) -> None:
        """A clean stop: the name is free at once (our turns are finished or handed back)."""
        try:
            await self._redis.delete(keys.worker_alive(self._loop.name))
        except (RedisError, OSError):
            pass

    async def observe_stream(self) -> None:
        """Stream lag and pending count, for metrics and autoscaling dashboards."""
        try:
            groups = await self._redis.xinfo_groups(keys.TURN_STREAM)
        except (RedisError, OSError):
            return
        for group in groups:
            name = group.get("name")
            if name in (keys.WORKER_GROUP, keys.WORKER_GROUP.encode()):
                metrics.STREAM_PENDING.set(group.get("pending") or 0)
                metrics.STREAM_LAG.set(group.get("lag") or 0)
