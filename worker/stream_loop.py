"""The stream loop: read turns from the consumer group, run many at once, reply, ack.

Reads in batches (XREADGROUP COUNT) and finishes each turn with one pipelined round trip (call
state + late reply + XACK). Turns left pending by a dead worker are reclaimed with XAUTOCLAIM
after VISIBILITY_TIMEOUT_MS. On stop: no more reads, in-flight turns get SHUTDOWN_GRACE_S, the
rest stay pending for another worker to reclaim.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, cast

from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.pb import voicebridge_pb2 as pb
from worker import metrics
from worker.replies import ReplySender
from worker.settings import WorkerSettings
from worker.turns import CallState, TurnHandler

log = logging.getLogger("worker.stream")

REAP_IDLE_MS = 3600 * 1000
READ_BLOCK_MS = 1000
StreamEntries = list[
    tuple[bytes, dict[bytes, bytes]]
]  # below the client's socket timeout (redis-py pitfall, design.md §8)


class StreamLoop:
    def __init__(
        self, settings: WorkerSettings, redis: Redis, handler: TurnHandler, sender: ReplySender
    ) -> None:
        self._s = settings
        self._redis = redis
        self._handler = handler
        self._sender = sender
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._entries: dict[bytes, asyncio.Task[None]] = {}  # in-flight stream entry ids
        self.turns_done = 0

    def stop(self) -> None:
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(
                keys.TURN_STREAM, keys.WORKER_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, burst: bool = False) -> None:
        """Serve until stop(); burst=True drains what is there and returns (for tests)."""
        await self.ensure_group()
        background = (
            []
            if burst
            else [
                asyncio.create_task(self._reclaim_forever()),
                asyncio.create_task(self._heartbeat_forever()),
            ]
        )
        backoff_s = 0.1
        try:
            while not self._stopping.is_set():
                free = self._s.concurrency - len(self._tasks)
                if free <= 0:
                    await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    response = await self._redis.xreadgroup(
                        keys.WORKER_GROUP,
                        self._s.name,
                        {keys.TURN_STREAM: ">"},
                        count=min(free, self._s.read_batch),
                        block=None if burst else READ_BLOCK_MS,
                    )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):  # the stream was deleted under us
                        await self.ensure_group()
                        continue
                    raise
                except (RedisError, OSError) as exc:
                    log.warning("redis read failed, retrying in %.1fs: %s", backoff_s, exc)
                    await self._sleep_or_stop(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
                    continue
                backoff_s = 0.1
                entries = cast(StreamEntries, cast(Any, response)[0][1] if response else [])
                if burst and not entries:
                    break
                for entry_id, fields in entries:
                    self._spawn(entry_id, fields)
        finally:
            for task in background:
                task.cancel()
            await self._drain()

    def _spawn(
        self, entry_id: bytes, fields: dict[bytes, bytes] | None, redelivered: bool = False
    ) -> None:
        task = asyncio.create_task(self._process(entry_id, fields, redelivered))
        self._tasks.add(task)
        self._entries[entry_id] = task
        metrics.IN_FLIGHT.inc()
        task.add_done_callback(lambda t: self._task_done(entry_id, t))

    def _task_done(self, entry_id: bytes, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._entries.get(entry_id) is task:
            del self._entries[entry_id]
        metrics.IN_FLIGHT.dec()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        done, pending = await asyncio.wait(self._tasks, timeout=self._s.shutdown_grace_s)
        for task in pending:
            task.cancel()  # left pending in the group: another worker reclaims it
        if pending:
            await asyncio.wait(pending)
            log.warning("stopped with %d turns unfinished; they will be reclaimed", len(pending))

    async def _sleep_or_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _process(
        self, entry_id: bytes, fields: dict[bytes, bytes] | None, redelivered: bool = False
    ) -> None:
        raw = (fields or {}).get(keys.TURN_FIELD)
        try:
            turn = pb.TurnRequest.FromString(raw) if raw else None
        except DecodeError:
            turn = None
        if turn is None or not turn.call_sid:
            log.error("unreadable stream entry %s acked and dropped", entry_id)
            await self._redis.xack(keys.TURN_STREAM, keys.WORKER_GROUP, entry_id)
            return
        try:
            await self._finish(entry_id, turn, redelivered, fields)
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
            await self._give_up(entry_id, turn)

    async def _give_up(self, entry_id: bytes, turn: pb.TurnRequest) -> None:
        reply = pb.TurnReply(
            turn_id=turn.turn_id,
            call_sid=turn.call_sid,
            seq=turn.seq,
            say=[self._s.fallback_phrase],
            fallback=True,
        )
        try:
            delivered = await self._sender.deliver(turn.reply_to, reply)
            pipe = self._redis.pipeline(transaction=True)
            if not delivered:
                self._keep_late(pipe, reply)
            # Mark it done so the call's next turns don't wait for it.
            pipe.hset(keys.call_state(turn.call_sid), keys.F_DONE_SEQ, turn.seq)
            pipe.expire(keys.call_state(turn.call_sid), keys.CALL_TTL_S)
            pipe.xack(keys.TURN_STREAM, keys.WORKER_GROUP, entry_id)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not finish a failed turn: %s", exc, extra={"turn_id": turn.turn_id})

    async def _finish(
        self,
        entry_id: bytes,
        turn: pb.TurnRequest,
        redelivered: bool,
        fields: dict[bytes, bytes] | None,
    ) -> None:
        outcome = await self._handler.handle(turn, redelivered, fields)
        reply, state = outcome.reply, outcome.state
        delivered = True
        if reply is not None:
            if state.has_late:
                reply = await self._with_late_replies(turn.call_sid, reply)
            delivered = await self._sender.deliver(turn.reply_to, reply)
        pipe = self._redis.pipeline(transaction=True)
        if reply is not None and not delivered:
            self._keep_late(pipe, reply)
        if turn.kind != pb.TurnRequest.CALL_END and reply is not None:
            self._save_state(pipe, turn, state)
        pipe.xack(keys.TURN_STREAM, keys.WORKER_GROUP, entry_id)
        await pipe.execute()
        self.turns_done += 1
        kind = pb.TurnRequest.Kind.Name(turn.kind)
        if reply is None:
            metrics.TURNS.labels(kind, "skipped").inc()
            return
        metrics.TURNS.labels(kind, "fallback" if reply.fallback else "ok").inc()
        if not delivered:
            metrics.LATE_REPLIES.inc()
        if turn.created_unix_ms:
            metrics.TURN_SECONDS.observe(max(time.time() - turn.created_unix_ms / 1000, 0.0))

    @staticmethod
    def _keep_late(pipe: Pipeline, reply: pb.TurnReply) -> None:
        """Nobody waits for this reply any more: the call's next webhook speaks it."""
        late_key = keys.late_replies(reply.call_sid)
        pipe.rpush(late_key, reply.SerializeToString())
        pipe.expire(late_key, keys.CALL_TTL_S)
        pipe.hset(keys.call_state(reply.call_sid), keys.F_HAS_LATE, 1)

    @staticmethod
    def _save_state(pipe: Pipeline, turn: pb.TurnRequest, state: CallState) -> None:
        key = keys.call_state(turn.call_sid)
        mapping: dict[str, str | int] = {
            keys.F_DONE_SEQ: max(turn.seq, state.done_seq),
            keys.F_USER_ID: state.user_id,
            keys.F_USER_KEY: state.user_key,
            keys.F_CONVERSATION: state.conversation,
        }
        pipe.hset(key, mapping=cast(Any, mapping))  # redis-py's Mapping is invariant
        if state.options:
            pipe.hset(key, keys.F_OPTIONS, json.dumps(state.options))
        else:
            pipe.hdel(key, keys.F_OPTIONS)
        pipe.expire(key, keys.CALL_TTL_S)

    async def _with_late_replies(self, call_sid: str, reply: pb.TurnReply) -> pb.TurnReply:
        """Replies that missed an earlier deadline are spoken first, in order."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.lrange(keys.late_replies(call_sid), 0, -1)
        pipe.delete(keys.late_replies(call_sid))
        pipe.hdel(keys.call_state(call_sid), keys.F_HAS_LATE)
        raw_late, _, _ = await pipe.execute()
        if not raw_late:
            return reply
        merged = pb.TurnReply(turn_id=reply.turn_id, call_sid=call_sid, seq=reply.seq)
        for raw in raw_late:
            late = pb.TurnReply.FromString(raw)
            merged.say.extend(late.say)
            merged.hangup = merged.hangup or late.hangup
        merged.say.extend(reply.say)
        merged.hangup = merged.hangup or reply.hangup
        merged.options.extend(reply.options)
        merged.fallback = reply.fallback
        return merged

    async def _reclaim_forever(self) -> None:
        interval_s = max(self._s.visibility_timeout_ms / 4000, 0.5)
        rounds = 0
        while not self._stopping.is_set():
            await self._sleep_or_stop(interval_s)
            if self._stopping.is_set():
                return
            try:
                await self.touch_in_flight()
                await self.reclaim_once()
                rounds += 1
                if rounds % 20 == 0:
                    await self.reap_idle_consumers()
            except (RedisError, OSError) as exc:
                log.info("reclaim skipped: %s", exc)

    async def touch_in_flight(self) -> None:
        """Reset the idle time of the turns we are working on (XCLAIM JUSTID does not count a
        delivery), so a slow bot never makes a live worker's turn look abandoned."""
        if self._entries:
            await self._redis.xclaim(
                keys.TURN_STREAM,
                keys.WORKER_GROUP,
                self._s.name,
                min_idle_time=0,
                message_ids=list(self._entries),
                justid=True,
            )

    async def reclaim_once(self) -> int:
        """Take over turns idle past the visibility timeout (their worker died); a turn
        delivered more than MAX_DELIVERIES times goes to the dead-letter stream instead."""
        free = self._s.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        _, entries, deleted = await self._redis.xautoclaim(
            keys.TURN_STREAM,
            keys.WORKER_GROUP,
            self._s.name,
            min_idle_time=self._s.visibility_timeout_ms,
            start_id="0-0",
            count=min(free, 100),
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
            consumername=self._s.name,
        )
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        for entry_id, fields in live:
            if entry_id in self._entries:
                continue  # ours, still in flight
            if deliveries.get(entry_id, 1) > self._s.max_deliveries:
                await self._dead_letter(entry_id, fields, deliveries[entry_id])
                continue
            log.info("reclaimed turn %s", entry_id)
            metrics.RECLAIMED.inc()
            self._spawn(entry_id, fields, redelivered=True)
        return len(live)

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], count: int) -> None:
        """Written to the dead-letter stream before the ack; the caller hears the fallback."""
        metrics.DEAD_LETTERS.inc()
        await self._redis.xadd(
            keys.DEAD_LETTER_STREAM,
            {
                keys.TURN_FIELD: fields.get(keys.TURN_FIELD, b""),
                b"entry": entry_id,
                b"deliveries": count,
                b"worker": self._s.name,
            },
            maxlen=keys.DEAD_LETTER_MAXLEN,
            approximate=True,
        )
        raw = fields.get(keys.TURN_FIELD)
        try:
            turn = pb.TurnRequest.FromString(raw) if raw else None
        except DecodeError:
            turn = None
        log.error(
            "turn dead-lettered after %d deliveries",
            count,
            extra={"turn_id": turn.turn_id if turn else str(entry_id)},
        )
        if turn is None or turn.kind == pb.TurnRequest.CALL_END:
            await self._redis.xack(keys.TURN_STREAM, keys.WORKER_GROUP, entry_id)
        else:
            await self._give_up(entry_id, turn)

    async def reap_idle_consumers(self) -> int:
        """Remove consumers idle for long with nothing pending (pods that are gone), so the
        group's consumer list does not grow without bound."""
        removed = 0
        for consumer in await self._redis.xinfo_consumers(keys.TURN_STREAM, keys.WORKER_GROUP):
            name = consumer.get("name")
            name = name.decode() if isinstance(name, bytes) else str(name)
            idle_ms = int(consumer.get("inactive", consumer.get("idle", 0)) or 0)
            if name != self._s.name and not consumer.get("pending") and idle_ms > REAP_IDLE_MS:
                await self._redis.xgroup_delconsumer(keys.TURN_STREAM, keys.WORKER_GROUP, name)
                removed += 1
        return removed

    async def _heartbeat_forever(self) -> None:
        """Liveness for probes: `python -m worker --check` looks for this key."""
        while not self._stopping.is_set():
            try:
                await self._redis.set(
                    keys.worker_alive(self._s.name), int(time.time()), ex=keys.WORKER_ALIVE_TTL_S
                )
            except (RedisError, OSError):
                pass
            await self._observe_stream()
            await self._sleep_or_stop(keys.WORKER_ALIVE_TTL_S / 3)

    async def _observe_stream(self) -> None:
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
