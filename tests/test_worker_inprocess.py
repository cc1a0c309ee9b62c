"""The worker's parts run in this process against real parts: a redis-server on a free port,
botsim, and the edge's gRPC reply server. Burst mode makes the stream loop deterministic."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis.asyncio import Redis

from botsim.bots import GREETING
from botsim.testing import BotsimProcess, spawn_botsim
from devstack.processes import Launcher
from edge.replies import ReplyWaiters, create_grpc_server
from edge.turns import CALL_END_SEQ
from shared import keys
from shared.callstore import CallState, CallStore, merge_replies, poll_until
from shared.pb import voicebridge_pb2 as pb
from shared.redis_conn import connect
from worker.backlog import Backlog, Waiting
from worker.botpress_client import BotpressClient
from worker.end_of_turn import QuietWindow
from worker.heartbeat import claim_name
from worker.recovery import Recovery
from worker.replies import ReplySender
from worker.settings import WorkerSettings
from worker.stream_loop import StreamLoop, ensure_group
from worker.turn_handler import TurnHandler

TOKEN = "inprocess-token"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    launcher = Launcher()
    server, url = launcher.redis()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def botsim() -> Iterator[BotsimProcess]:
    with spawn_botsim() as sim:
        yield sim


class Parts:
    def __init__(self, settings: WorkerSettings, redis: Redis, waiters: ReplyWaiters) -> None:
        self.settings = settings
        self.redis = redis
        self.waiters = waiters
        self.store = CallStore(redis)
        self.bot = BotpressClient(settings.chat_url)
        self.sender = ReplySender(TOKEN, settings.deliver_timeout_s)
        self.window = QuietWindow(redis, settings.chat_url, settings.bot_quiet_s)
        self.handler = TurnHandler(settings, self.store, self.bot, self.sender, self.window)
        self.reply_to = ""

    def loop(self, name: str = "inprocess-0") -> StreamLoop:
        return StreamLoop(self.settings, self.redis, self.handler, name)

    def turn(
        self, call_sid: str, seq: int, text: str = "", number: str = "+14155550100"
    ) -> pb.TurnRequest:
        kind = pb.TurnRequest.CALL_START if seq == 0 else pb.TurnRequest.SPEECH
        return pb.TurnRequest(
            turn_id=f"{call_sid}:{seq}",
            call_sid=call_sid,
            seq=seq,
            kind=kind,
            text=text,
            from_number=number,
            reply_to=self.reply_to,
        )


@pytest.fixture()
async def parts(redis_url: str, botsim: BotsimProcess) -> AsyncIterator[Parts]:
    settings = WorkerSettings.from_env(
        {
            "REDIS_URL": redis_url,
            "BOTPRESS_CHAT_URL": botsim.base_url,
            "BOT_QUIET_MS": "30",
            "GRPC_TOKEN": TOKEN,
        }
    )
    redis = connect(redis_url, socket_timeout_s=5.0)
    await redis.flushdb()
    waiters = ReplyWaiters()
    server, port = await create_grpc_server(waiters, "127.0.0.1", TOKEN)
    p = Parts(settings, redis, waiters)
    p.reply_to = f"127.0.0.1:{port}"
    yield p
    await p.handler.aclose()
    await server.stop(grace=None)
    await p.sender.aclose()
    await p.bot.aclose()
    await redis.aclose()


async def test_one_turn_in_process_replies_and_saves_the_call(parts: Parts) -> None:
    turn = parts.turn("CA" + "1" * 32, 0)
    waiting = parts.waiters.expect(turn.turn_id)
    outcome = await parts.handler.run(None, turn)
    reply = await asyncio.wait_for(waiting, 5)
    assert list(reply.say) == [GREETING]
    assert outcome.reply is not None and not outcome.reply.fallback
    state = await parts.store.load(turn.call_sid)
    assert state.done_seq == 0
    assert state.conversation == turn.call_sid and state.user_key


async def test_the_stream_loop_in_burst_mode_runs_every_turn_and_acks_it(parts: Parts) -> None:
    calls = [f"CA{i:032d}" for i in range(3)]
    waiting = []
    for i, sid in enumerate(calls):
        turn = parts.turn(sid, 0, number=f"+1415555020{i}")
        waiting.append(parts.waiters.expect(turn.turn_id))
        assert await parts.store.submit(turn, sid) == []
    await parts.redis.xadd(keys.TURN_STREAM, {keys.TURN_FIELD: b"\xff not a turn"})
    loop = parts.loop()
    await loop.run(burst=True)
    replies = await asyncio.gather(*(asyncio.wait_for(w, 5) for w in waiting))
    assert [list(r.say) for r in replies] == [[GREETING]] * 3
    assert loop.turns_done == 3
    # Every entry acked, the unreadable one too.
    assert (await parts.redis.xpending(keys.TURN_STREAM, keys.WORKER_GROUP))["pending"] == 0
    for sid in calls:
        assert (await parts.store.load(sid)).done_seq == 0


async def test_a_late_reply_is_kept_and_spoken_first_at_the_next_turn(parts: Parts) -> None:
    sid = "CA" + "2" * 32
    # Nobody waits for the greeting: it is kept as late.
    await parts.store.submit(parts.turn(sid, 0), sid)
    await parts.loop().run(burst=True)
    assert await parts.redis.llen(keys.late_replies(sid)) == 1
    late = await parts.store.submit(parts.turn(sid, 1, "hi there"), sid)
    assert [list(r.say) for r in late] == [[GREETING]]
    assert await parts.redis.exists(keys.late_replies(sid)) == 0
    waiting = parts.waiters.expect(f"{sid}:1")
    await parts.loop().run(burst=True)
    assert list((await asyncio.wait_for(waiting, 5)).say) == ["You said: hi there"]


async def test_a_turn_of_a_call_whose_state_was_lost_does_not_wait(parts: Parts) -> None:
    sid = "CA" + "3" * 32
    await parts.store.submit(parts.turn(sid, 0), sid)
    assert (await parts.store.load(sid)).exists  # the first turn creates the call
    await parts.redis.flushdb()  # Redis came back empty
    turn = parts.turn(sid, 4, "still there")
    await parts.store.submit(turn, sid)
    state = await parts.store.load(sid)
    assert state.lost and state.done_seq == 3
    # The group is back too (the submit recreated it), so the loop reads the turn at once.
    waiting = parts.waiters.expect(turn.turn_id)
    await parts.loop().run(burst=True)
    reply = await asyncio.wait_for(waiting, 5)
    # Shared mode: the caller's user key was only in Redis, so the call goes on as a fresh
    # Botpress user and conversation, whose first message the echo bot greets.
    assert list(reply.say) == [GREETING] and not reply.fallback
    assert (await parts.store.load(sid)).done_seq == 4


async def test_a_turn_waits_for_its_predecessor_but_not_for_a_vanished_call(
    parts: Parts,
) -> None:
    sid = "CA" + "4" * 32
    await parts.store.submit(parts.turn(sid, 0), sid)
    turn = parts.turn(sid, 1, "hello")
    # Turn 0 not done: the wait runs out (a short bound here), the state still there.
    state = await parts.store.wait_for_turn(turn, None, timeout_s=0.1)
    assert state.exists and state.done_seq == -1
    await parts.redis.delete(keys.call_state(sid))  # Redis lost the call
    # A long bound, yet it returns at once: there is no predecessor to wait for.
    state = await asyncio.wait_for(parts.store.wait_for_turn(turn, None, timeout_s=30), 2)
    assert not state.exists and state.done_seq == -1


async def test_a_dead_workers_pending_turn_is_taken_over(parts: Parts) -> None:
    sid = "CA" + "5" * 32
    await ensure_group(parts.redis)
    turn = parts.turn(sid, 0)
    await parts.store.submit(turn, sid)
    # A worker named "ghost" read it, then died: no liveness key, the turn pending under it.
    await parts.redis.xreadgroup(keys.WORKER_GROUP, "ghost", {keys.TURN_STREAM: ">"}, count=10)
    (entry,) = await parts.redis.xpending_range(keys.TURN_STREAM, keys.WORKER_GROUP, "-", "+", 10)
    # Idle as if it died a while ago (the min idle guards turns in transit to a live reader).
    await parts.redis.xclaim(
        keys.TURN_STREAM, keys.WORKER_GROUP, "ghost", 0, [entry["message_id"]], idle=5000
    )
    name = await claim_name(parts.redis, None, "token")
    loop = parts.loop(name)
    waiting = parts.waiters.expect(turn.turn_id)
    assert await Recovery(parts.settings, parts.redis, loop, parts.handler).take_over_dead() == 1
    assert list((await asyncio.wait_for(waiting, 5)).say) == [GREETING]
    await asyncio.wait_for(loop.run(burst=True), 5)  # drains the taken-over task
    assert (await parts.redis.xpending(keys.TURN_STREAM, keys.WORKER_GROUP))["pending"] == 0


async def test_a_live_workers_turn_is_not_taken(parts: Parts) -> None:
    sid = "CA" + "6" * 32
    await ensure_group(parts.redis)
    await parts.store.submit(parts.turn(sid, 0), sid)
    await parts.redis.xreadgroup(keys.WORKER_GROUP, "busy", {keys.TURN_STREAM: ">"}, count=10)
    await parts.redis.set(keys.worker_alive("busy"), "t", ex=keys.WORKER_ALIVE_TTL_S)
    (entry,) = await parts.redis.xpending_range(keys.TURN_STREAM, keys.WORKER_GROUP, "-", "+", 10)
    await parts.redis.xclaim(
        keys.TURN_STREAM, keys.WORKER_GROUP, "busy", 0, [entry["message_id"]], idle=5000
    )
    loop = parts.loop("other-0")
    assert await Recovery(parts.settings, parts.redis, loop, parts.handler).take_over_dead() == 0


async def test_two_automatic_names_on_one_machine_differ(parts: Parts) -> None:
    first = await claim_name(parts.redis, None, "a")
    second = await claim_name(parts.redis, None, "b")
    assert first != second
    assert first.endswith("-0") and second.endswith("-1")


def test_late_replies_are_spoken_first_and_any_hangup_ends_the_call() -> None:
    late = [pb.TurnReply(say=["one"]), pb.TurnReply(say=["two"], hangup=True)]
    reply = pb.TurnReply(
        turn_id="t", call_sid="c", seq=3, say=["three"], options=[pb.Option(label="a")]
    )
    merged = merge_replies(late, reply)
    assert list(merged.say) == ["one", "two", "three"]
    assert merged.hangup and merged.turn_id == "t" and merged.seq == 3
    assert [o.label for o in merged.options] == ["a"]
    assert list(merge_replies(late, None).say) == ["one", "two"]
    assert CallState.from_hash({}).exists is False


def _waiting(sid: str, seq: int, deadline_ms: int) -> Waiting:
    turn = pb.TurnRequest(
        turn_id=f"{sid}:{seq}", call_sid=sid, seq=seq, deadline_unix_ms=deadline_ms
    )
    return Waiting(f"{sid}-{seq}".encode(), None, turn)


class Recording(TurnHandler):
    """A worker's handler that records the turns it starts, and holds them while `hold` is
    unset (a busy slot)."""

    def __init__(
        self,
        parts: Parts,
        settings: WorkerSettings,
        started: list[str],
        hold: asyncio.Event | None = None,
    ) -> None:
        super().__init__(settings, parts.store, parts.bot, parts.sender, parts.window)
        self._started = started
        self._hold = hold

    async def run(self, entry_id, turn, redelivered=False, snapshot=None):  # type: ignore[no-untyped-def]
        self._started.append(turn.turn_id)
        if self._hold is not None:
            await self._hold.wait()
        return await super().run(entry_id, turn, redelivered, snapshot)


def test_the_backlog_starts_turns_that_can_make_their_deadline_first() -> None:
    backlog = Backlog(limit=10)
    now = 1_000
    backlog.add(_waiting("expired", 1, now - 500))
    backlog.add(_waiting("soon", 1, now + 100))
    backlog.add(_waiting("later", 1, now + 200))
    # A call's turns start in order: its old turn first, ranked by its newest turn's deadline.
    backlog.add(_waiting("behind", 1, now - 100))
    backlog.add(_waiting("behind", 2, now + 300))
    order = []
    while (w := backlog.next(now)) is not None:
        order.append(w.turn.turn_id)
    assert order == ["behind:1", "behind:2", "later:1", "soon:1", "expired:1"]
    assert len(backlog) == 0 and backlog.room == 10


async def test_an_expired_turn_does_not_delay_one_that_can_still_be_answered(
    parts: Parts,
) -> None:
    settings = dataclasses.replace(parts.settings, concurrency=1, read_ahead=4)
    started: list[str] = []

    handler = Recording(parts, settings, started)
    now_ms = int(time.time() * 1000)
    first, expired, fresh = ("CA" + c * 32 for c in "789")
    deadlines = {first: now_ms + 60_000, expired: now_ms - 1_000, fresh: now_ms + 60_000}
    waiting = {}
    for i, sid in enumerate((first, expired, fresh)):
        turn = parts.turn(sid, 0, number=f"+1415555030{i}")
        turn.deadline_unix_ms = deadlines[sid]
        waiting[sid] = parts.waiters.expect(turn.turn_id)
        await parts.store.submit(turn, sid)
    await StreamLoop(settings, parts.redis, handler, "one-slot-0").run(burst=True)
    # One slot: the first read runs at once; then the turn that can still be answered goes
    # before the one whose edge stopped waiting, which is finished as a late reply.
    assert started == [f"{first}:0", f"{fresh}:0", f"{expired}:0"]
    assert list((await asyncio.wait_for(waiting[fresh], 5)).say) == [GREETING]
    assert not waiting[expired].done()
    assert await parts.redis.llen(keys.late_replies(expired)) == 1
    await handler.aclose()


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_worker_with_free_slots_takes_turns_another_worker_read_ahead(
    parts: Parts,
) -> None:
    # One worker with one busy slot reads ahead; a second worker, idle, must not stay idle
    # while those turns wait (each turn runs once, by whoever took it from the held set).
    release = asyncio.Event()
    started: dict[str, list[str]] = {"busy-0": [], "idle-0": []}

    busy_settings = dataclasses.replace(parts.settings, concurrency=1, read_ahead=8)
    idle_settings = dataclasses.replace(parts.settings, concurrency=4, read_ahead=0)
    busy_handler = Recording(parts, busy_settings, started["busy-0"], release)
    idle_handler = Recording(parts, idle_settings, started["idle-0"])
    for name in started:
        await parts.redis.set(keys.worker_alive(name), "test", ex=60)
    calls = [f"CA{i:02d}" + "5" * 30 for i in range(4)]
    waiting = {}
    for i, sid in enumerate(calls):
        turn = parts.turn(sid, 0, number=f"+1415555040{i}")
        waiting[sid] = parts.waiters.expect(turn.turn_id)
        await parts.store.submit(turn, sid)
    busy = StreamLoop(busy_settings, parts.redis, busy_handler, "busy-0")
    busy_task = asyncio.create_task(busy.run())
    await _until(lambda: len(busy.backlog) == 3)
    assert await parts.redis.zcard(keys.worker_held("busy-0")) == 3
    idle = StreamLoop(idle_settings, parts.redis, idle_handler, "idle-0")
    idle_task = asyncio.create_task(idle.run())
    await _until(lambda: len(started["idle-0"]) == 3)
    replies = [await asyncio.wait_for(waiting[sid], 5) for sid in calls[1:]]
    assert [list(r.say) for r in replies] == [[GREETING]] * 3
    release.set()
    await asyncio.wait_for(waiting[calls[0]], 5)
    # The busy worker's slot frees: its backlog is found taken, nothing runs twice.
    await _until(lambda: not len(busy.backlog) and not busy.entries)
    assert started["busy-0"] == [f"{calls[0]}:0"]
    assert sorted(started["idle-0"]) == sorted(f"{sid}:0" for sid in calls[1:])
    await _until(lambda: idle.turns_done == 3)
    assert (await parts.redis.xpending(keys.TURN_STREAM, keys.WORKER_GROUP))["pending"] == 0
    for loop in (busy, idle):
        loop.stop()
    await asyncio.gather(busy_task, idle_task)
    await busy_handler.aclose()
    await idle_handler.aclose()


async def test_a_turn_runs_its_predecessor_when_that_one_waits_in_a_backlog(parts: Parts) -> None:
    # The call's turn 1 waits in a busy worker's backlog; the caller speaks again (turn 2) and
    # an idle one-slot worker reads it. Waiting for turn 1 would hold that only slot for the
    # whole order wait: instead it takes turn 1 from the backlog and runs it first.
    release = asyncio.Event()
    started: dict[str, list[str]] = {"busy-1": [], "one-slot-1": []}

    busy_settings = dataclasses.replace(parts.settings, concurrency=1, read_ahead=8)
    one_settings = dataclasses.replace(parts.settings, concurrency=1, read_ahead=0)
    for name in started:
        await parts.redis.set(keys.worker_alive(name), "test", ex=60)
    call, blocker = "CA" + "6" * 32, "CA" + "7" * 32
    await parts.handler.run(None, parts.turn(call, 0, number="+14155550501"))
    for turn in (parts.turn(blocker, 0, number="+14155550502"), parts.turn(call, 1, "one")):
        await parts.store.submit(turn, turn.call_sid)
    busy_handler = Recording(parts, busy_settings, started["busy-1"], release)
    busy = StreamLoop(busy_settings, parts.redis, busy_handler, "busy-1")
    busy_task = asyncio.create_task(busy.run())
    await _until(lambda: len(busy.backlog) == 1)
    second = parts.turn(call, 2, "two")
    waiting = [parts.waiters.expect(f"{call}:1"), parts.waiters.expect(second.turn_id)]
    await parts.store.submit(second, call)
    one_handler = Recording(parts, one_settings, started["one-slot-1"])
    one = StreamLoop(one_settings, parts.redis, one_handler, "one-slot-1")
    one_task = asyncio.create_task(one.run())
    replies = [await asyncio.wait_for(w, 5) for w in waiting]
    assert all(r.say and not r.fallback for r in replies)
    assert started["one-slot-1"] == [f"{call}:1", f"{call}:2"]
    state = await poll_until(lambda: parts.store.load(call), lambda s: s.done_seq == 2, 5)
    assert state.done_seq == 2
    release.set()
    await _until(lambda: not len(busy.backlog) and not busy.entries)
    assert started["busy-1"] == [f"{blocker}:0"]
    for loop in (busy, one):
        loop.stop()
    await asyncio.gather(busy_task, one_task)
    await busy_handler.aclose()
    await one_handler.aclose()


def _call_end(call_sid: str) -> pb.TurnRequest:
    return pb.TurnRequest(
        turn_id=f"{call_sid}:end",
        call_sid=call_sid,
        seq=CALL_END_SEQ,
        kind=pb.TurnRequest.CALL_END,
        call_status="completed",
    )


async def _bot_heard(parts: Parts, state: CallState) -> list[str]:
    messages = await parts.bot.list_messages(state.user_key, state.conversation)
    return [str((m.get("payload") or {}).get("text", "")) for m in messages]


async def test_a_turn_still_queued_when_its_call_ended_is_skipped_not_sent_to_the_bot(
    parts: Parts,
) -> None:
    # Overload: the caller spoke, then hung up while the turn still queued behind busy
    # workers; the edge had long answered its webhook (deadline passed). CALL_END has no
    # deadline, so a backlog starts it first. The turn must then not reach the bot: nobody
    # hears it, and (before the call was marked ended) it ran with no order at all.
    sid = "CA" + "e1" * 16
    await parts.handler.run(None, parts.turn(sid, 0))
    state = await parts.store.load(sid)
    spoken = parts.turn(sid, 1, "are you still there")
    spoken.deadline_unix_ms = int(time.time() * 1000) - 1000
    await parts.store.submit(spoken, sid)  # its snapshot: turn 0 done, the call not ended
    await parts.handler.run(None, _call_end(sid))
    assert (await parts.store.load(sid)).ended
    assert 0 < await parts.redis.ttl(keys.call_state(sid)) <= keys.ENDED_TTL_S
    loop = parts.loop()
    await loop.run(burst=True)
    assert loop.turns_done == 1  # read, skipped, acked
    assert (await parts.redis.xpending(keys.TURN_STREAM, keys.WORKER_GROUP))["pending"] == 0
    assert "are you still there" not in await _bot_heard(parts, state)


async def test_an_order_wait_ends_when_the_call_ends(parts: Parts) -> None:
    sid = "CA" + "e2" * 16
    await parts.store.submit(parts.turn(sid, 0), sid)  # turn 0 never finishes
    turn = parts.turn(sid, 1, "hello")
    waiting = asyncio.create_task(parts.store.wait_for_turn(turn, None, timeout_s=30))
    await parts.store.end(sid)
    state = await asyncio.wait_for(waiting, 2)  # a long bound, yet it returns once ended
    assert state.ended and state.done_seq == -1
    outcome = await parts.handler.run(None, turn)
    assert outcome.reply is None


async def test_a_call_with_no_state_leaves_nothing_when_it_ends(parts: Parts) -> None:
    sid = "CA" + "e3" * 16
    await parts.handler.run(None, _call_end(sid))
    assert await parts.redis.exists(keys.call_state(sid)) == 0


async def test_a_turn_that_finishes_after_its_call_ended_keeps_the_short_ttl(parts: Parts) -> None:
    # The turn was talking to the bot when the caller hung up: its finish writes the state,
    # but the ended mark keeps ENDED_TTL_S, not the hours of a live call.
    sid = "CA" + "e4" * 16
    await parts.handler.run(None, parts.turn(sid, 0))
    state = await parts.store.load(sid)
    await parts.store.end(sid)
    turn = parts.turn(sid, 1, "one more thing")
    reply = pb.TurnReply(turn_id=turn.turn_id, call_sid=sid, seq=1, say=["Noted."])
    await parts.store.finish(turn, reply, state, delivered=False, ack_entry=None)
    after = await parts.store.load(sid)
    assert after.ended and after.done_seq == 1
    assert 0 < await parts.redis.ttl(keys.call_state(sid)) <= keys.ENDED_TTL_S
    # A live call's finish still renews its state for CALL_TTL_S.
    live = "CA" + "e5" * 16
    await parts.handler.run(None, parts.turn(live, 0))
    await parts.redis.expire(keys.call_state(live), 10)
    await parts.handler.run(None, parts.turn(live, 1, "hello"))
    assert await parts.redis.ttl(keys.call_state(live)) > keys.ENDED_TTL_S


async def test_a_late_reply_for_a_call_with_no_state_leaves_a_hash_that_expires(
    parts: Parts,
) -> None:
    sid = "CA" + "e6" * 16
    await parts.store.keep_late(pb.TurnReply(call_sid=sid, seq=3, say=["Still there?"]))
    assert 0 < await parts.redis.ttl(keys.call_state(sid)) <= keys.CALL_TTL_S
    assert 0 < await parts.redis.ttl(keys.late_replies(sid)) <= keys.CALL_TTL_S
