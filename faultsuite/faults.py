"""The faults, each injected while turns are in flight, from the suite's event loop.

"In flight" is read from Redis: the consumer group's pending entries (XPENDING) are turns a
worker has read and not yet acked. A worker is killed only while it holds some; Redis and the
edge are restarted while any turn is pending. If nothing is in flight within MID_TURN_WAIT_S the
fault happens anyway, and the record says so. Process control blocks, so it runs in a thread.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from devstack.processes import Managed
from devstack.stack import Stack
from faultsuite.redis_server import PersistentRedis
from shared import keys

MID_TURN_WAIT_S = 15.0
POLL_S = 0.02
REDIS_OUTAGE_S = 3.0
TAKEOVER_WAIT_S = 60.0


@dataclass
class FaultRecord:
    kind: str
    at_s: float  # since the phase started
    mid_turn: bool  # turns were pending when it struck
    pending: int  # pending turns seen (for a worker kill: that worker's)
    took_s: float = 0.0  # until the replacement was serving
    # kill -9 worker: from the kill until another worker had finished every turn the victim
    # held (taken over by its missing heartbeat); None when it held none.
    answered_s: float | None = None
    target: str = ""
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultInjector:
    def __init__(self, stack: Stack, redis_server: PersistentRedis, started_at: float) -> None:
        self.stack = stack
        self.redis_server = redis_server
        self.started_at = started_at
        self.records: list[FaultRecord] = []

    def _pending_by_consumer(self) -> dict[str, int]:
        client = redis.Redis.from_url(self.stack.redis_url, socket_timeout=1.0)
        try:
            info = client.xpending(keys.TURN_STREAM, keys.WORKER_GROUP)
        except (redis.RedisError, OSError):
            return {}
        finally:
            client.close()
        consumers = info.get("consumers") or []
        return {_text(c["name"]): int(c["pending"]) for c in consumers}

    def _pending_ids(self, consumer: str) -> set[bytes]:
        client = redis.Redis.from_url(self.stack.redis_url, socket_timeout=1.0)
        try:
            entries = client.xpending_range(
                keys.TURN_STREAM, keys.WORKER_GROUP, "-", "+", 1000, consumername=consumer
            )
        except (redis.RedisError, OSError):
            return set()
        finally:
            client.close()
        return {cast(bytes, e["message_id"]) for e in entries}

    def _still_pending(self, ids: set[bytes]) -> set[bytes]:
        client = redis.Redis.from_url(self.stack.redis_url, socket_timeout=1.0)
        try:
            entries = client.xpending_range(keys.TURN_STREAM, keys.WORKER_GROUP, "-", "+", 10000)
        except (redis.RedisError, OSError):
            return ids
        finally:
            client.close()
        return ids & {e["message_id"] for e in entries}

    async def _until_finished(self, ids: set[bytes], since: float) -> float | None:
        """Seconds from `since` until none of `ids` is pending (another worker acked them)."""
        give_up = time.monotonic() + TAKEOVER_WAIT_S
        while ids and time.monotonic() < give_up:
            ids = await asyncio.to_thread(self._still_pending, ids)
            if not ids:
                return round(time.monotonic() - since, 2)
            await asyncio.sleep(POLL_S)
        return None

    async def _wait_in_flight(self, names: set[str] | None) -> tuple[str | None, int]:
        """A consumer (one of `names`, or any) holding pending turns, and how many."""
        give_up = time.monotonic() + MID_TURN_WAIT_S
        while time.monotonic() < give_up:
            pending = await asyncio.to_thread(self._pending_by_consumer)
            busy = {n: p for n, p in pending.items() if p > 0 and (names is None or n in names)}
            if busy:
                name = max(busy, key=lambda n: busy[n])
                return name, busy[name]
            await asyncio.sleep(POLL_S)
        return None, 0

    def _record(self, kind: str, name: str | None, pending: int) -> FaultRecord:
        record = FaultRecord(
            kind,
            round(time.monotonic() - self.started_at, 2),
            name is not None,
            pending,
            target=name or "",
        )
        self.records.append(record)
        return record

    async def kill_worker(self) -> FaultRecord:
        """kill -9 a worker holding turns, then start a replacement (a new consumer name)."""
        alive = {w.name: w for w in self.stack.workers if w.alive()}
        name, pending = await self._wait_in_flight(set(alive))
        victim: Managed = alive[name] if name else next(iter(alive.values()))
        held = await asyncio.to_thread(self._pending_ids, name) if name else set()
        victim.proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        record = self._record("kill -9 worker", name, pending)
        record.target = victim.name
        finished = asyncio.create_task(self._until_finished(held, t0))
        await asyncio.to_thread(victim.proc.wait)
        replacement = await asyncio.to_thread(self.stack.start_worker)
        record.target += f" -> {replacement.name}"
        record.took_s = round(time.monotonic() - t0, 2)
        record.answered_s = await finished if held else None
        return record

    async def restart_redis(self, down_s: float = 0.0) -> FaultRecord:
        """SIGTERM redis-server, keep it down for down_s, start it again on the same port and
        AOF directory."""
        name, pending = await self._wait_in_flight(None)
        record = self._record("restart redis" + (f" ({down_s:g} s down)" if down_s else ""),
                              name, pending)  # fmt: skip
        t0 = time.monotonic()
        await asyncio.to_thread(self.redis_server.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.redis_server.start)
        record.took_s = round(time.monotonic() - t0, 2)
        return record

    async def restart_redis_empty(self) -> FaultRecord:
        """Redis restarted with nothing: the stream, the group and every call's state gone.
        answered_s: from the restart until a turn written after it was finished."""
        name, pending = await self._wait_in_flight(None)
        record = self._record("restart redis empty", name, pending)
        t0 = time.monotonic()
        await asyncio.to_thread(self.redis_server.stop)
        await asyncio.to_thread(self.redis_server.wipe)
        await asyncio.to_thread(self.redis_server.start)
        record.took_s = round(time.monotonic() - t0, 2)
        record.answered_s = await self._until_a_turn_finished(t0)
        return record

    def _finished_turns(self) -> int:
        client = redis.Redis.from_url(self.stack.redis_url, socket_timeout=1.0)
        try:
            groups = client.xinfo_groups(keys.TURN_STREAM)
        except (redis.RedisError, OSError):
            return 0
        finally:
            client.close()
        for group in groups:
            if _text(group.get("name")) == keys.WORKER_GROUP:
                return int(group.get("entries-read") or 0) - int(group.get("pending") or 0)
        return 0

    async def _until_a_turn_finished(self, since: float) -> float | None:
        give_up = time.monotonic() + TAKEOVER_WAIT_S
        while time.monotonic() < give_up:
            if await asyncio.to_thread(self._finished_turns) > 0:
                return round(time.monotonic() - since, 2)
            await asyncio.sleep(POLL_S)
        return None

    async def restart_edge(self) -> FaultRecord:
        """SIGTERM the edge (gunicorn), wait for it to exit, start it on the same port."""
        name, pending = await self._wait_in_flight(None)
        record = self._record("restart edge", name, pending)
        t0 = time.monotonic()
        edge = self.stack.edge
        if edge is not None:
            await asyncio.to_thread(edge.stop)
        await asyncio.to_thread(self.stack.start_edge)
        record.took_s = round(time.monotonic() - t0, 2)
        return record


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def redis_outage(injector: FaultInjector) -> FaultRecord:
    """Redis away long enough that webhooks meet it down (callers hear the trouble phrase)."""
    return await injector.restart_redis(down_s=REDIS_OUTAGE_S)
