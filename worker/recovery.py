"""Turns nobody is finishing: taken over, dead-lettered, and the group's consumers kept tidy.

- A dead worker (its liveness key gone: killed, crashed, its pod deleted) leaves turns pending
  under its consumer name; a live worker takes them within about WORKER_ALIVE_TTL_S plus one
  TAKEOVER_INTERVAL_S of the death, not after the visibility timeout.
- Our own name's pending turns that no task of ours runs are a previous life's (same stable
  WORKER_NAME restarted): taken back at once.
- A worker that is alive but stuck keeps its liveness key: idle time is the rule there
  (XAUTOCLAIM past VISIBILITY_TIMEOUT_MS). Live workers reset the idle time of their in-flight
  turns (XCLAIM JUSTID), so a slow bot never makes a turn look abandoned.
- A turn delivered more than MAX_DELIVERIES times goes to the dead-letter stream, the caller
  hears the fallback phrase.
- Consumers gone for long with nothing pending are deleted from the group.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import keys
from worker import metrics
from worker.routing import TurnRunner
from worker.settings import WorkerSettings
from worker.stream_loop import StreamFields, StreamLoop, decode_turn, ensure_group

log = logging.getLogger(__name__)

# How often a worker looks for dead workers' turns.
TAKEOVER_INTERVAL_S = 1.0
# A pending entry idle for less than this may be in transit to a live reader: never taken.
TAKEOVER_MIN_IDLE_MS = 1000
# Entries taken over per consumer per round, at most.
TAKEOVER_BATCH = 100
# Consumers idle this long with nothing pending are deleted from the group.
REAP_IDLE_MS = 3600 * 1000
REAP_INTERVAL_S = 60.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Recovery:
    def __init__(
        self, settings: WorkerSettings, redis: Redis, loop: StreamLoop, handler: TurnRunner
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._loop = loop
        self._handler = handler

    async def run(self) -> None:
        """Until the stream loop stops: take over dead workers' turns every second, idle ones
        and the in-flight touch every quarter of the visibility timeout, reaping now and then."""
        idle_interval_s = max(self._settings.visibility_timeout_ms / 4000, TAKEOVER_INTERVAL_S)
        next_idle = time.monotonic() + idle_interval_s
        next_reap = time.monotonic() + REAP_INTERVAL_S
        while not self._loop.stopping.is_set():
            await self._loop.sleep_or_stop(TAKEOVER_INTERVAL_S)
            if self._loop.stopping.is_set():
                return
            try:
                await self.take_over_dead()
                if time.monotonic() >= next_idle:
                    next_idle = time.monotonic() + idle_interval_s
                    await self.touch_in_flight()
                    await self.reclaim_idle()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + REAP_INTERVAL_S
                    await self.reap_idle_consumers()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.warning("recovery round failed: %s", exc)
                    continue
                try:  # Redis came back empty: recreate the group and go on
                    await ensure_group(self._redis)
                except (RedisError, OSError):
                    pass
            except (RedisError, OSError) as exc:
                log.info("recovery round skipped: %s", exc)

    async def touch_in_flight(self) -> None:
        """Reset the idle time of the turns we are working on (XCLAIM JUSTID does not count a
        delivery), so a slow bot never makes a live worker's turn look abandoned."""
        waiting = [entry_id for entry_id, task in self._loop.entries.items() if task is None]
        if waiting:
            # Backlogged turns another worker took are theirs now: not ours to keep alive.
            held = await self._loop.sharing.still_held(waiting)
            self._loop.forget_taken({e for e, ours in zip(waiting, held, strict=True) if not ours})
        if self._loop.entries:
            await self._redis.xclaim(
                keys.TURN_STREAM,
                keys.WORKER_GROUP,
                self._loop.name,
                min_idle_time=0,
                message_ids=list(self._loop.entries),
                justid=True,
            )

    async def take_over_dead(self) -> int:
        """Take the pending turns of consumers whose liveness key is gone, and our own name's
        turns that no task of ours runs (a previous life of this worker)."""
        summary = await self._redis.xpending(keys.TURN_STREAM, keys.WORKER_GROUP)
        holders = [
            _text(c["name"]) for c in summary.get("consumers") or [] if int(c["pending"]) > 0
        ]
        others = [name for name in holders if name != self._loop.name]
        dead: list[str] = []
        if others:
            pipe = self._redis.pipeline(transaction=False)
            for name in others:
                pipe.exists(keys.worker_alive(name))
            alive = await pipe.execute()
            dead = [name for name, up in zip(others, alive, strict=True) if not up]
        if self._loop.name in holders:
            dead.append(self._loop.name)
        taken = 0
        for name in dead:
            if name != self._loop.name:
                await self._loop.sharing.drop_dead(name)  # its pending turns are taken whole
            taken += await self._take_pending_of(name)
        return taken

    async def _take_pending_of(self, consumer: str) -> int:
        free = self._loop.free_slots
        if free <= 0:
            return 0
        pending = await self._redis.xpending_range(
            keys.TURN_STREAM,
            keys.WORKER_GROUP,
            min="-",
            max="+",
            count=min(free, TAKEOVER_BATCH),
            consumername=consumer,
            idle=TAKEOVER_MIN_IDLE_MS,
        )
        deliveries = {
            cast(bytes, p["message_id"]): int(p["times_delivered"])
            for p in pending
            if p["message_id"] not in self._loop.entries
        }
        if not deliveries:
            return 0
        # min_idle_time makes the claim atomic among live workers racing for the same turns:
        # the first claim resets the idle time, so the second one gets nothing.
        claimed = await self._redis.xclaim(  # type: ignore[misc]
            keys.TURN_STREAM,
            keys.WORKER_GROUP,
            self._loop.name,
            min_idle_time=TAKEOVER_MIN_IDLE_MS,
            message_ids=list(deliveries),
        )
        entries = [
            (entry_id, fields)
            for entry_id, fields in cast(list[tuple[bytes, StreamFields | None]], claimed)
            if fields is not None
        ]
        if entries:
            log.info("took %d turns of worker %s (no heartbeat)", len(entries), consumer)
        # XCLAIM counted one more delivery.
        await self._start(entries, {k: v + 1 for k, v in deliveries.items()})
        return len(entries)

    async def reclaim_idle(self) -> int:
        """Take over turns idle past the visibility timeout (a live but stuck worker)."""
        free = self._loop.free_slots
        if free <= 0:
            return 0
        _, entries, deleted = await self._redis.xautoclaim(
            keys.TURN_STREAM,
            keys.WORKER_GROUP,
            self._loop.name,
            min_idle_time=self._settings.visibility_timeout_ms,
            start_id="0-0",
            count=min(free, TAKEOVER_BATCH),
        )
        if deleted:
            # Trimmed while pending (XAUTOCLAIM drops them from the pending list itself).
            log.warning("%d pending turns were trimmed before anyone finished them", len(deleted))
        live = [(entry_id, fields) for entry_id, fields in entries if fields is not None]
        if not live:
            return 0
        pending = await self._redis.xpending_range(
            keys.TURN_STREAM,
            keys.WORKER_GROUP,
            min=live[0][0],
            max=live[-1][0],
            count=len(live) * 4,
            consumername=self._loop.name,
        )
        counts = {cast(bytes, p["message_id"]): int(p["times_delivered"]) for p in pending}
        await self._start(live, counts)
        return len(live)

    async def _start(
        self, entries: list[tuple[bytes, StreamFields]], deliveries: dict[bytes, int]
    ) -> None:
        for entry_id, fields in entries:
            if entry_id in self._loop.entries:
                continue  # ours, still in flight
            count = deliveries.get(entry_id, 1)
            if count > self._settings.max_deliveries:
                await self._dead_letter(entry_id, fields, count)
                continue
            log.info("reclaimed turn %s", entry_id)
            metrics.RECLAIMED.inc()
            self._loop.spawn(entry_id, fields, redelivered=True)

    async def _dead_letter(self, entry_id: bytes, fields: StreamFields, count: int) -> None:
        """Written to the dead-letter stream before the ack; the caller hears the fallback."""
        metrics.DEAD_LETTERS.inc()
        await self._redis.xadd(
            keys.DEAD_LETTER_STREAM,
            {
                keys.TURN_FIELD: fields.get(keys.TURN_FIELD, b""),
                b"entry": entry_id,
                b"deliveries": count,
                b"worker": self._loop.name,
            },
            maxlen=keys.DEAD_LETTER_MAXLEN,
            approximate=True,
        )
        turn = decode_turn(fields)
        log.error(
            "turn dead-lettered after %d deliveries",
            count,
            extra={"turn_id": turn.turn_id if turn else str(entry_id)},
        )
        if turn is None:
            await self._redis.xack(keys.TURN_STREAM, keys.WORKER_GROUP, entry_id)
        else:
            await self._handler.give_up(entry_id, turn)

    async def reap_idle_consumers(self) -> int:
        """Remove consumers idle for long with nothing pending (pods that are gone), so the
        group's consumer list does not grow without bound."""
        removed = 0
        consumers = await self._redis.xinfo_consumers(keys.TURN_STREAM, keys.WORKER_GROUP)
        for consumer in cast(list[dict[str, Any]], consumers):
            name = _text(consumer.get("name"))
            idle_ms = int(consumer.get("inactive", consumer.get("idle", 0)) or 0)
            if name != self._loop.name and not consumer.get("pending") and idle_ms > REAP_IDLE_MS:
                await self._redis.xgroup_delconsumer(keys.TURN_STREAM, keys.WORKER_GROUP, name)
                removed += 1
        return removed
