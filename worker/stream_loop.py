"""The stream loop: read turns from the consumer group, run many at once, drain on stop.

Reads in batches (XREADGROUP COUNT; docs/architecture.md, "Pitfalls": the asyncio client costs
more per command than Redis) and spawns one task per turn, each run by the TurnHandler (which
also finishes it: reply, state, ack, in one round trip). Taking over other workers' turns lives in
worker/recovery.py, liveness and gauges in worker/heartbeat.py. On stop: no more reads,
in-flight turns get SHUTDOWN_GRACE_S, the rest stay pending for another worker to take.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.callstore import CALLER_TURNS, CallState
from shared.pb import voicebridge_pb2 as pb
from worker import metrics
from worker.backlog import Backlog, Waiting, deadline_ms
from worker.routing import TurnRunner
from worker.settings import WorkerSettings
from worker.sharing import SharedBacklog

log = logging.getLogger(__name__)

# Below the client's socket timeout (redis-py 8 pitfall: a longer BLOCK raises TimeoutError).
READ_BLOCK_MS = 1000
# Free slots while other workers hold backlogged turns: look for more this often.
SHARE_POLL_MS = 20
# Redis unreachable: retry reads with a growing pause, capped low so a Redis that is back is
# noticed within about a second.
READ_RETRY_FIRST_S = 0.1
READ_RETRY_MAX_S = 1.0

StreamFields = dict[bytes, bytes]
StreamEntries = list[tuple[bytes, StreamFields]]


def decode_turn(fields: StreamFields | None) -> pb.TurnRequest | None:
    """The TurnRequest of a stream entry; None for an entry nobody can read (trimmed, garbage)."""
    raw = (fields or {}).get(keys.TURN_FIELD)
    try:
        turn = pb.TurnRequest.FromString(raw) if raw else None
    except DecodeError:
        return None
    return turn if turn is not None and turn.call_sid else None


async def ensure_group(redis: Redis) -> None:
    """Create the consumer group (and the stream) unless it exists: whoever notices first."""
    try:
        await redis.xgroup_create(keys.TURN_STREAM, keys.WORKER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class StreamLoop:
    def __init__(
        self, settings: WorkerSettings, redis: Redis, handler: TurnRunner, name: str
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._handler = handler
        self.name = name  # our consumer name in the group
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Every stream entry we hold: running (its task) or waiting in the backlog (None).
        self.entries: dict[bytes, asyncio.Task[None] | None] = {}
        self.backlog = Backlog(settings.read_ahead * settings.concurrency)
        self.sharing = SharedBacklog(redis, name)
        self._burst = False
        self.turns_done = 0

    def stop(self) -> None:
        self.stopping.set()

    @property
    def free_slots(self) -> int:
        return self._settings.concurrency - len(self._tasks)

    async def run(self, burst: bool = False) -> None:
        """Serve until stop(); burst=True drains what is there and returns (tests, one-offs)."""
        retry_s = READ_RETRY_FIRST_S
        need_group = True
        self._burst = burst
        try:
            while not self.stopping.is_set():
                room = max(self.free_slots, 0) + self.backlog.room
                if room <= 0:
                    await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    if need_group:
                        await ensure_group(self._redis)
                        # A previous life of this name held turns: they are taken over whole.
                        await self.sharing.drop_dead(self.name)
                        need_group = False
                    sharing = self.free_slots > 0 and self.sharing.others_hold
                    response = await self._redis.xreadgroup(
                        keys.WORKER_GROUP,
                        self.name,
                        {keys.TURN_STREAM: ">"},
                        count=min(room, self._settings.read_batch),
                        block=None if burst else SHARE_POLL_MS if sharing else READ_BLOCK_MS,
                    )
                    retry_s = READ_RETRY_FIRST_S
                    entries = cast(StreamEntries, cast(Any, response)[0][1] if response else [])
                    if burst and not entries:
                        await self._run_backlog()
                        break
                    if await self._admit(entries):
                        # The new turn runs to its first await (its listen request on the wire)
                        # before this loop encodes and sends its next XREADGROUP: 0.2 ms sooner.
                        await asyncio.sleep(0)
                    if self.free_slots > 0 and (not entries or self.sharing.others_hold):
                        self._take_shared(
                            await self.sharing.take(
                                self.free_slots, keys.TURN_STREAM, keys.WORKER_GROUP
                            )
                        )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):  # the stream was deleted, or Redis came back empty
                        need_group = True
                        continue
                    raise
                except (RedisError, OSError) as exc:
                    # Redis down (or not up yet at start): wait for it, never exit.
                    log.warning("redis read failed, retrying in %.1fs: %s", retry_s, exc)
                    await self.sleep_or_stop(retry_s)
                    retry_s = min(retry_s * 2, READ_RETRY_MAX_S)
        finally:
            await self._drain()

    async def _admit(self, entries: StreamEntries) -> bool:
        """Start the turns just read; every slot busy, the rest wait in the backlog. True when
        one was started."""
        waiting: list[Waiting] = []
        started = False
        for entry_id, fields in entries:
            if self.free_slots > 0 and not len(self.backlog) and not waiting:
                self.spawn(entry_id, fields)  # the common case: decoded once, by the turn's task
                started = True
                continue
            turn = decode_turn(fields)
            if turn is None:
                self.spawn(entry_id, fields)  # acked and dropped at once
                continue
            waiting.append(Waiting(entry_id, fields, turn))
        if not waiting:
            return started
        # Held in Redis before anyone may start them: the claim before a start is the ZREM.
        # (Should this fail, they are pending under us untouched: idle reclaim takes them.)
        await self.sharing.hold({w.entry_id: deadline_ms(w.turn) for w in waiting})
        for w in waiting:
            self.entries[w.entry_id] = None
            self.backlog.add(w)
        metrics.BACKLOG.set(len(self.backlog))
        self._start_waiting()
        return True  # _start_waiting may have started some

    def _take_shared(self, taken: StreamEntries) -> None:
        """Turns another worker had read ahead, now ours (worker/sharing.py)."""
        for entry_id, fields in taken:
            if entry_id not in self.entries:
                metrics.BACKLOG_SHARED.inc()
                self.spawn(entry_id, fields)

    def forget_taken(self, entry_ids: set[bytes]) -> None:
        """Backlogged turns another worker took: not ours to run or to keep alive."""
        if self.backlog.discard(entry_ids):
            for entry_id in entry_ids:
                if self.entries.get(entry_id, False) is None:
                    del self.entries[entry_id]
            metrics.BACKLOG.set(len(self.backlog))

    def _start_waiting(self) -> None:
        """Free slots take turns from the backlog (worker/backlog.py decides which)."""
        if self.stopping.is_set() and not self._burst:
            return  # stopping: what waits stays pending for another worker
        now_ms = int(time.time() * 1000)
        while self.free_slots > 0:
            waiting = self.backlog.next(now_ms)
            if waiting is None:
                break
            if waiting.turn.deadline_unix_ms and waiting.turn.deadline_unix_ms < now_ms:
                metrics.BACKLOG_EXPIRED.inc()
            self.spawn(waiting.entry_id, waiting.fields, held=True)
        metrics.BACKLOG.set(len(self.backlog))

    async def _run_backlog(self) -> None:
        """Burst mode: everything read is run before returning."""
        while len(self.backlog) or self._tasks:
            self._start_waiting()
            if self._tasks:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)

    def spawn(
        self,
        entry_id: bytes,
        fields: StreamFields | None,
        redelivered: bool = False,
        held: bool = False,
    ) -> None:
        task = asyncio.create_task(self._process(entry_id, fields, redelivered, held))
        self._tasks.add(task)
        self.entries[entry_id] = task
        metrics.IN_FLIGHT.inc()
        task.add_done_callback(lambda t: self._task_done(entry_id, t))

    def _task_done(self, entry_id: bytes, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self.entries.get(entry_id) is task:
            del self.entries[entry_id]
        metrics.IN_FLIGHT.dec()
        if len(self.backlog):
            self._start_waiting()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        done, pending = await asyncio.wait(self._tasks, timeout=self._settings.shutdown_grace_s)
        for task in pending:
            task.cancel()  # left pending in the group: another worker takes it
        if pending:
            await asyncio.wait(pending)
            log.warning("stopped with %d turns unfinished; they will be reclaimed", len(pending))

    async def sleep_or_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _process(
        self,
        entry_id: bytes,
        fields: StreamFields | None,
        redelivered: bool = False,
        held: bool = False,
    ) -> None:
        if held and not await self.sharing.claim(entry_id):
            return  # another worker with free slots took it from our backlog
        turn = decode_turn(fields)
        if turn is None:
            log.error("unreadable stream entry %s acked and dropped", entry_id)
            await self._redis.xack(keys.TURN_STREAM, keys.WORKER_GROUP, entry_id)
            return
        if not redelivered and turn.kind in CALLER_TURNS and turn.seq > 0:
            await self._run_predecessor(turn, fields)
        await self._run(entry_id, turn, fields, redelivered)

    async def _run_predecessor(self, turn: pb.TurnRequest, fields: StreamFields | None) -> None:
        """The call's previous turn, when it still waits in a backlog: run here, first (its
        order wait would otherwise hold this slot until a busy worker gets to it)."""
        snapshot = CallState.from_hash(fields or {})
        if snapshot.done_seq >= turn.seq - 1 or not snapshot.last_entry:
            return
        try:
            prev_fields = await self.sharing.take_one(
                snapshot.last_entry, keys.TURN_STREAM, keys.WORKER_GROUP
            )
        except (RedisError, OSError):
            return  # the order wait still holds
        prev = decode_turn(prev_fields)
        if prev is None or prev.call_sid != turn.call_sid:
            return
        metrics.BACKLOG_SHARED.inc()
        self.entries.setdefault(snapshot.last_entry, None)
        try:
            await self._run(snapshot.last_entry, prev, prev_fields, False)
        finally:
            if self.entries.get(snapshot.last_entry, False) is None:
                del self.entries[snapshot.last_entry]

    async def _run(
        self,
        entry_id: bytes,
        turn: pb.TurnRequest,
        fields: StreamFields | None,
        redelivered: bool,
    ) -> None:
        try:
            await self._handler.run(entry_id, turn, redelivered, fields)
            self.turns_done += 1
        except (RedisError, OSError) as exc:
            # Not acked: the entry stays pending and is reclaimed after the visibility timeout.
            log.warning(
                "turn failed on redis, left for reclaim: %s",
                exc,
                extra={"call_sid": turn.call_sid, "turn_id": turn.turn_id},
            )
        except Exception:
            # A bug would fail the same way on every retry: the caller hears the fallback phrase
            # now, and the call goes on, instead of hold phrases until the turn is dead-lettered.
            log.exception(
                "turn failed; fallback phrase sent",
                extra={"call_sid": turn.call_sid, "turn_id": turn.turn_id},
            )
            await self._handler.give_up(entry_id, turn)
