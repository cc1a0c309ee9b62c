"""Relay mode on the worker (TurnRequest.stream): each bot message or delta is a part, sent to
a real gRPC EdgeReplies server in this test that records every part in order and answers as the
test wants. Real parts otherwise: a redis-server on a free port and botsim as the bot."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from botsim.testing import BotsimProcess, spawn_botsim
from devstack.processes import Launcher
from shared import keys
from shared.callstore import CallState, CallStore, poll_until
from shared.pb import voicebridge_pb2 as pb
from shared.pb import voicebridge_pb2_grpc as pb_grpc
from shared.redis_conn import connect
from worker.botpress_client import BotpressClient
from worker.end_of_turn import QuietWindow
from worker.replies import ReplySender
from worker.reply_stream import ReplyStream, unresolved_marker_at
from worker.settings import DEFAULT_FALLBACK, WorkerSettings
from worker.turn_handler import TurnHandler

SCENARIOS = Path(__file__).resolve().parent.parent / "botsim" / "scenarios"
STREAMED_GREETING = "Hello, this bot streams every answer word by word."
SLOW_ONE = "Part one: you said {}."
SLOW_TWO = "Part two: that is all for this turn."
WAIT_S = 10.0

Answer = Callable[[pb.TurnReply], pb.DeliverAck]


def accept(_: pb.TurnReply) -> pb.DeliverAck:
    return pb.DeliverAck(accepted=True)


class RecordingEdge(pb_grpc.EdgeRepliesServicer):
    """An edge's reply server that records every part, in the order it came, and answers each
    with `answer` (accepted by default)."""

    def __init__(self) -> None:
        self.parts: list[pb.TurnReply] = []
        self.answer: Answer = accept
        self._arrived = asyncio.Condition()

    async def Deliver(self, request: pb.TurnReply, context: Any) -> pb.DeliverAck:
        async with self._arrived:
            self.parts.append(request)
            self._arrived.notify_all()
        return self.answer(request)

    async def wait_for(self, count: int) -> list[pb.TurnReply]:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.parts) >= count), WAIT_S)
        return self.parts

    def texts(self) -> list[str]:
        return [p.text for p in self.parts]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    launcher = Launcher()
    server, url = launcher.redis()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def echo_bot() -> Iterator[BotsimProcess]:
    with spawn_botsim() as sim:
        yield sim


@pytest.fixture(scope="module")
def streamed_bot() -> Iterator[BotsimProcess]:
    with spawn_botsim("--scenario", str(SCENARIOS / "streamed.json")) as sim:
        yield sim


@pytest.fixture(scope="module")
def slow_two_bot() -> Iterator[BotsimProcess]:
    with spawn_botsim("--scenario", str(SCENARIOS / "two_messages_500ms.json")) as sim:
        yield sim


class Worker:
    """A turn handler against one botsim, and a recording edge to reply to."""

    def __init__(self, settings: WorkerSettings, redis: Redis, edge: RecordingEdge) -> None:
        self.settings = settings
        self.redis = redis
        self.edge = edge
        self.store = CallStore(redis)
        self.bot = BotpressClient(settings.chat_url)
        self.sender = ReplySender("", settings.deliver_timeout_s)
        self.window = QuietWindow(redis, settings.chat_url, settings.bot_quiet_s)
        self.handler = TurnHandler(settings, self.store, self.bot, self.sender, self.window)
        self.reply_to = ""

    def turn(
        self,
        call_sid: str,
        seq: int,
        text: str = "",
        *,
        stream: bool = True,
        kind: pb.TurnRequest.Kind.ValueType | None = None,
        **fields: Any,
    ) -> pb.TurnRequest:
        if kind is None:
            kind = pb.TurnRequest.CALL_START if seq == 0 else pb.TurnRequest.SPEECH
        return pb.TurnRequest(
            turn_id=f"{call_sid}:{seq}",
            call_sid=call_sid,
            seq=seq,
            kind=kind,
            text=text,
            from_number=f"+1415{secrets.randbelow(10**7):07d}",
            reply_to=self.reply_to,
            stream=stream,
            **{"deadline_unix_ms": int(time.time() * 1000) + 60_000, **fields},
        )

    async def start_call(self, settle: bool = False) -> tuple[str, CallState]:
        """A call whose greeting was heard (the recording is then cleared): its state saved.
        `settle`: also wait until the greeting's trailing messages were kept."""
        sid = f"CA{secrets.token_hex(16)}"
        await self.handler.run(None, self.turn(sid, 0))
        if settle:
            await poll_until(
                lambda: asyncio.sleep(0), lambda _: not self.handler._observers, WAIT_S
            )
        self.edge.parts.clear()
        return sid, await self.store.load(sid)

    async def bot_heard(self, state: CallState, turn_id: str) -> dict[str, Any]:
        """The message the bot got for `turn_id`, as Botpress lists it."""
        listed = await self.bot.list_messages(state.user_key, state.conversation, pages=3)
        for message in listed:
            meta = (message.get("metadata") or {}).get("voicebridge") or {}
            if meta.get("turnId") == turn_id:
                return message
        raise AssertionError(f"the bot never got {turn_id}")

    async def bot_said(self, state: CallState) -> list[str]:
        listed = await self.bot.list_messages(state.user_key, state.conversation, pages=3)
        listed.sort(key=lambda m: str(m.get("createdAt", "")))
        return [
            str(m["payload"].get("text", ""))
            for m in listed
            if m.get("userId") != listed[0].get("userId")  # the first is our opening text
        ]

    async def late(self, call_sid: str) -> list[pb.TurnReply]:
        raw = await self.redis.lrange(keys.late_replies(call_sid), 0, -1)  # type: ignore[misc]
        return [pb.TurnReply.FromString(b) for b in raw]


@pytest.fixture()
async def workers(redis_url: str) -> AsyncIterator[Callable[..., Worker]]:
    redis = connect(redis_url, socket_timeout_s=5.0)
    await redis.flushdb()
    edge = RecordingEdge()
    server = grpc.aio.server()
    pb_grpc.add_EdgeRepliesServicer_to_server(edge, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    made: list[Worker] = []

    def make(bot: BotsimProcess, **env: str) -> Worker:
        settings = WorkerSettings.from_env(
            {
                "REDIS_URL": redis_url,
                "BOTPRESS_CHAT_URL": bot.base_url,
                "BOT_QUIET_MS": "30",
                **env,
            }
        )
        worker = Worker(settings, redis, edge)
        worker.reply_to = f"127.0.0.1:{port}"
        made.append(worker)
        return worker

    yield make
    for worker in made:
        await worker.handler.aclose()
        await worker.sender.aclose()
        await worker.bot.aclose()
    await server.stop(grace=None)
    await redis.aclose()


def check_numbering(parts: list[pb.TurnReply]) -> None:
    """Parts 1, 2, ... in order, `more` on all but the last."""
    assert [p.part for p in parts] == list(range(1, len(parts) + 1))
    assert [p.more for p in parts] == [True] * (len(parts) - 1) + [False]


async def test_each_message_is_a_part_sent_as_it_arrives(
    workers: Callable[..., Worker], slow_two_bot: BotsimProcess
) -> None:
    worker = workers(slow_two_bot, BOT_QUIET_MS="1000")
    sid, state = await worker.start_call()
    turn = worker.turn(sid, 1, "hi there")
    running = asyncio.create_task(worker.handler.run(None, turn))
    (first,) = await worker.edge.wait_for(1)
    # The first message is with the edge while the bot has not said its second one yet.
    assert first.text == SLOW_ONE.format("hi there") and first.more and first.part == 1
    assert list(first.say) == [SLOW_ONE.format("hi there")]
    assert SLOW_TWO not in await worker.bot_said(state)
    outcome = await asyncio.wait_for(running, WAIT_S)
    parts = worker.edge.parts
    check_numbering(parts)
    assert worker.edge.texts() == [SLOW_ONE.format("hi there"), " " + SLOW_TWO, ""]
    assert not parts[-1].hangup and not parts[-1].fallback
    assert outcome.reply is not None and (await worker.store.load(sid)).done_seq == 1
    assert await worker.late(sid) == []


async def test_a_streamed_message_goes_out_delta_by_delta_and_is_not_said_twice(
    workers: Callable[..., Worker], streamed_bot: BotsimProcess
) -> None:
    worker = workers(streamed_bot)
    sid = f"CA{secrets.token_hex(16)}"
    await worker.handler.run(None, worker.turn(sid, 0))
    parts = worker.edge.parts
    check_numbering(parts)
    words = STREAMED_GREETING.split(" ")
    # One part per delta (botsim streams word by word, spacing kept), then an empty final part:
    # the final message_created added nothing the deltas had not said.
    assert worker.edge.texts() == [w + " " for w in words[:-1]] + [words[-1], ""]
    assert "".join(worker.edge.texts()) == STREAMED_GREETING
    assert (await worker.store.load(sid)).done_seq == 0


async def test_an_aborted_stream_ends_there_and_the_next_message_follows_spaced(
    workers: Callable[..., Worker], streamed_bot: BotsimProcess
) -> None:
    worker = workers(streamed_bot)
    sid, _ = await worker.start_call()
    await worker.handler.run(None, worker.turn(sid, 1, "cut"))
    check_numbering(worker.edge.parts)
    assert "".join(worker.edge.texts()) == "This sentence is cut off After the cut."


async def test_a_reply_that_is_only_an_aborted_stream_ends_after_the_quiet_window(
    workers: Callable[..., Worker], streamed_bot: BotsimProcess
) -> None:
    worker = workers(streamed_bot, BOT_TIMEOUT_MS="60000")
    sid, _ = await worker.start_call()
    # Not the bot's time-out (far past WAIT_S): what was said counts as an answer.
    await asyncio.wait_for(worker.handler.run(None, worker.turn(sid, 1, "halt")), WAIT_S)
    parts = worker.edge.parts
    check_numbering(parts)
    assert "".join(worker.edge.texts()) == "Only this much"
    assert not parts[-1].fallback and parts[-1].text == ""


async def test_a_marker_split_across_deltas_is_never_said_and_the_last_part_hangs_up(
    workers: Callable[..., Worker], streamed_bot: BotsimProcess
) -> None:
    worker = workers(streamed_bot)
    sid, _ = await worker.start_call()
    # The bot says "Goodbye for now. < HangUp />", streamed as "< ", "HangUp ", "/>".
    await worker.handler.run(None, worker.turn(sid, 1, "bye"))
    parts = worker.edge.parts
    check_numbering(parts)
    for part in parts:
        assert "<" not in part.text and "hang" not in part.text.lower() and ">" not in part.text
    assert "".join(worker.edge.texts()).strip() == "Goodbye for now."
    assert parts[-1].hangup and parts[-1].text == ""
    assert not any(p.hangup for p in parts[:-1])
    assert await worker.late(sid) == []


async def test_stop_sends_no_more_parts_and_finishes_the_turn(
    workers: Callable[..., Worker], slow_two_bot: BotsimProcess
) -> None:
    worker = workers(slow_two_bot, BOT_QUIET_MS="1000")
    sid, state = await worker.start_call()
    worker.edge.answer = lambda part: pb.DeliverAck(accepted=True, stop=part.part == 1)
    await worker.redis.xgroup_create(keys.TURN_STREAM, keys.WORKER_GROUP, "$", mkstream=True)
    turn = worker.turn(sid, 1, "hello")
    await worker.store.submit(turn, sid)
    ((_, [(entry_id, _)]),) = await worker.redis.xreadgroup(
        keys.WORKER_GROUP, "stream-test", {keys.TURN_STREAM: ">"}, count=1
    )
    await worker.handler.run(entry_id, turn)
    assert worker.edge.texts() == [SLOW_ONE.format("hello")]
    # Finished as usual: state saved, entry acked, nothing kept, nobody left watching.
    assert (await worker.store.load(sid)).done_seq == 1
    assert (await worker.redis.xpending(keys.TURN_STREAM, keys.WORKER_GROUP))["pending"] == 0
    assert not worker.handler._observers
    said = await poll_until(lambda: worker.bot_said(state), lambda s: SLOW_TWO in s, WAIT_S)
    assert SLOW_TWO in said  # the bot did go on: none of it reached the edge or the late list
    assert len(worker.edge.parts) == 1
    assert await worker.late(sid) == []


async def test_a_gone_session_keeps_the_whole_reply_as_one_late_reply(
    workers: Callable[..., Worker], slow_two_bot: BotsimProcess
) -> None:
    worker = workers(slow_two_bot, BOT_QUIET_MS="1000")
    sid, _ = await worker.start_call()
    worker.edge.answer = lambda part: pb.DeliverAck(accepted=False)
    await worker.handler.run(None, worker.turn(sid, 1, "anyone"))
    assert len(worker.edge.parts) == 1  # nothing more was sent once it was refused
    (late,) = await worker.late(sid)
    assert late.part == 0 and not late.more and not late.fallback
    assert list(late.say) == [SLOW_ONE.format("anyone"), SLOW_TWO]
    assert late.text == f"{SLOW_ONE.format('anyone')} {SLOW_TWO}"
    assert (await worker.store.load(sid)).done_seq == 1


async def test_past_its_deadline_nothing_is_sent_and_all_is_kept_late(
    workers: Callable[..., Worker], streamed_bot: BotsimProcess
) -> None:
    worker = workers(streamed_bot)
    sid = f"CA{secrets.token_hex(16)}"
    turn = worker.turn(sid, 0, deadline_unix_ms=int(time.time() * 1000) - 5000)
    await worker.handler.run(None, turn)
    assert worker.edge.parts == []
    (late,) = await worker.late(sid)
    assert late.text == STREAMED_GREETING and list(late.say) == [STREAMED_GREETING]


async def test_a_bot_that_never_answers_gets_one_fallback_part(
    workers: Callable[..., Worker], streamed_bot: BotsimProcess
) -> None:
    worker = workers(streamed_bot, BOT_TIMEOUT_MS="300")
    sid, _ = await worker.start_call()
    await worker.handler.run(None, worker.turn(sid, 1, "silence please"))
    (part,) = worker.edge.parts
    assert part.part == 1 and not part.more and part.fallback
    assert part.text == DEFAULT_FALLBACK and list(part.say) == [DEFAULT_FALLBACK]


async def test_a_choice_is_read_with_its_options_and_a_key_picks_one(
    workers: Callable[..., Worker], streamed_bot: BotsimProcess
) -> None:
    worker = workers(streamed_bot)
    sid, state = await worker.start_call()
    await worker.handler.run(None, worker.turn(sid, 1, "the menu"))
    # A question ends the turn: it is the final part itself (one Deliver), options and all.
    (final,) = worker.edge.parts
    assert final.part == 1 and not final.more
    assert final.text == "Tea or coffee? You can say Tea, or Coffee."
    options = [("Tea", "tea"), ("Coffee", "coffee")]
    assert [(o.label, o.value) for o in final.options] == options
    worker.edge.parts.clear()
    await worker.handler.run(
        None,
        worker.turn(sid, 2, kind=pb.TurnRequest.DTMF, digits="2", heard="Tea or", heard_ms=640),
    )
    assert "".join(worker.edge.texts()) == "You said coffee."
    heard = await worker.bot_heard(state, f"{sid}:2")
    assert heard["payload"] == {"type": "text", "text": "coffee"}
    meta = heard["metadata"]["voicebridge"]
    assert meta["kind"] == "dtmf" and meta["digits"] == "2" and meta["callSid"] == sid
    assert meta["interrupted"] == {"heard": "Tea or", "ms": 640}


async def test_keys_without_options_reach_the_bot_as_digits(
    workers: Callable[..., Worker], echo_bot: BotsimProcess
) -> None:
    worker = workers(echo_bot)
    sid, state = await worker.start_call()
    await worker.handler.run(None, worker.turn(sid, 1, kind=pb.TurnRequest.DTMF, digits="1234#"))
    assert worker.edge.texts() == ["You said: 1234#", ""]
    meta = (await worker.bot_heard(state, f"{sid}:1"))["metadata"]["voicebridge"]
    assert meta["kind"] == "dtmf" and meta["digits"] == "1234#" and "interrupted" not in meta


async def test_with_no_quiet_window_a_one_message_reply_is_one_final_part(
    workers: Callable[..., Worker], echo_bot: BotsimProcess
) -> None:
    # BOT_QUIET_MS=0 is where the learned window of a one-message bot ends up (the default):
    # the turn ends at the message, so the message and the reply's end go in one Deliver.
    worker = workers(echo_bot, BOT_QUIET_MS="0")
    sid, _ = await worker.start_call()
    await worker.store.keep_late(pb.TurnReply(call_sid=sid, seq=0, say=["You missed this."]))
    await worker.handler.run(None, worker.turn(sid, 1, "one part"))
    parts = worker.edge.parts
    check_numbering(parts)
    # Late replies still lead as a part of their own, sent at once.
    assert worker.edge.texts() == ["You missed this.", " You said: one part"]
    assert list(parts[-1].say) == ["You said: one part"] and not parts[-1].fallback
    assert (await worker.store.load(sid)).done_seq == 1 and await worker.late(sid) == []


async def test_a_final_part_the_session_refused_keeps_the_whole_reply_late(
    workers: Callable[..., Worker], echo_bot: BotsimProcess
) -> None:
    worker = workers(echo_bot, BOT_QUIET_MS="0")
    sid, _ = await worker.start_call()
    worker.edge.answer = lambda part: pb.DeliverAck(accepted=False)
    await worker.handler.run(None, worker.turn(sid, 1, "anyone there"))
    (sent,) = worker.edge.parts
    assert sent.text == "You said: anyone there" and not sent.more
    (late,) = await worker.late(sid)
    assert late.part == 0 and list(late.say) == ["You said: anyone there"]
    assert late.text == "You said: anyone there"


async def test_what_the_caller_heard_reaches_the_bot(
    workers: Callable[..., Worker], echo_bot: BotsimProcess
) -> None:
    worker = workers(echo_bot)
    sid, state = await worker.start_call()
    turn = worker.turn(sid, 1, "wait stop", heard="Hello! I am the", heard_ms=1250)
    await worker.handler.run(None, turn)
    assert worker.edge.texts() == ["You said: wait stop", ""]
    meta = (await worker.bot_heard(state, turn.turn_id))["metadata"]["voicebridge"]
    assert meta["interrupted"] == {"heard": "Hello! I am the", "ms": 1250}
    assert meta["kind"] == "speech"


async def test_late_replies_waiting_are_the_first_part(
    workers: Callable[..., Worker], echo_bot: BotsimProcess
) -> None:
    worker = workers(echo_bot)
    sid, _ = await worker.start_call()
    await worker.store.keep_late(pb.TurnReply(call_sid=sid, seq=0, say=["You missed this."]))
    await worker.handler.run(None, worker.turn(sid, 1, "hi"))
    assert worker.edge.texts() == ["You missed this.", " You said: hi", ""]
    assert await worker.late(sid) == []


async def test_a_message_after_the_reply_is_kept_late_in_stream_mode(
    workers: Callable[..., Worker], slow_two_bot: BotsimProcess
) -> None:
    worker = workers(slow_two_bot)  # a 30 ms window: the second message comes after the reply
    sid, _ = await worker.start_call(settle=True)
    await worker.redis.delete(keys.late_replies(sid))  # the greeting's own second message
    await worker.handler.run(None, worker.turn(sid, 1, "quick"))
    assert worker.edge.texts() == [SLOW_ONE.format("quick"), ""]
    late = await poll_until(lambda: worker.late(sid), bool, WAIT_S)
    assert [list(r.say) for r in late] == [[SLOW_TWO]] and late[0].text == SLOW_TWO


async def test_a_gather_turn_is_one_whole_reply(
    workers: Callable[..., Worker], streamed_bot: BotsimProcess
) -> None:
    worker = workers(streamed_bot)
    sid = f"CA{secrets.token_hex(16)}"
    await worker.handler.run(None, worker.turn(sid, 0, stream=False))
    (reply,) = worker.edge.parts
    assert list(reply.say) == [STREAMED_GREETING]
    assert reply.part == 0 and not reply.more and reply.text == ""


# -- the marker hold-back, fed by hand -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("Bye <", "<"),
        ("Bye < HaN", "< HaN"),
        ("Bye <hangup /", "<hangup /"),
        ("a < b", ""),
        ("<b>", ""),
        ("x <hangupz", ""),
        ("plain", ""),
    ],
)
def test_a_possible_marker_start_is_held_back(text: str, held: str) -> None:
    assert text[unresolved_marker_at(text) :] == held


async def test_a_marker_split_anywhere_is_cut_and_nothing_after_it_is_said() -> None:
    sent: list[pb.TurnReply] = []

    async def send(part: pb.TurnReply) -> pb.DeliverAck:
        sent.append(part)
        return pb.DeliverAck(accepted=True)

    stream = ReplyStream(pb.TurnRequest(turn_id="CA1:1", call_sid="CA1", seq=1), send)
    for chunk in ["Fine, ", "bye <", "HA", "ngUp", " /", "> and more", " words"]:
        await stream.delta("s1", chunk)
    assert [p.text for p in sent] == ["Fine, ", "bye "] and stream.hangup
    final, delivered = await stream.finish(pb.TurnReply())
    assert delivered and final.hangup and final.part == 3 and not final.more
