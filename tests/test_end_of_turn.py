"""The end-of-turn rule against botsim and a real Redis: a question, a choice and a marker end
the reply at once; a fixed window is honoured; the learned window grows from a gap it saw; a
message after the reply went out is kept, never lost."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from botsim.testing import BotsimProcess, spawn_botsim
from devstack.processes import Launcher
from edge.replies import ReplyWaiters, create_grpc_server
from shared import keys
from shared.callstore import CallStore, poll_until
from shared.pb import voicebridge_pb2 as pb
from shared.redis_conn import connect
from worker.botpress_client import BotpressClient
from worker.end_of_turn import (
    INITIAL_S,
    MARGIN_S,
    MIN_SAMPLES,
    QuietWindow,
    hands_turn_to_caller,
    learned_window_s,
)
from worker.replies import ReplySender
from worker.settings import WorkerSettings
from worker.turn_handler import TurnHandler

TOKEN = "end-of-turn-token"
CALLS = itertools.count(1)
SCENARIO = """
name: end-of-turn
greeting: ["Hi."]
rules:
  - when: '^two'
    reply: ["First part.", {payload: {type: text, text: "Second part."}, delay_ms: 100}]
  - when: '^ask'
    reply:
      - "Shall I go on?"
      - {payload: {type: text, text: "Said after the question."}, delay_ms: 600}
  - when: '^pick'
    reply:
      - {type: choice, text: "Which one", options: [{label: Red, value: red}]}
      - {payload: {type: text, text: "Said after the choice."}, delay_ms: 600}
  - when: '^bye'
    reply: ["Goodbye."]
    hangup: true
fallback: ["You said: {text}"]
"""


def text(value: str) -> dict[str, object]:
    return {"payload": {"type": "text", "text": value}}


def test_what_hands_the_turn_to_the_caller() -> None:
    assert hands_turn_to_caller(text("Shall I go on?"))
    assert hands_turn_to_caller(text('He asked: "Ready?"  '))
    assert hands_turn_to_caller(text("¿Quieres más?"))
    assert hands_turn_to_caller({"payload": {"type": "markdown", "markdown": "**Which one?**"}})
    assert hands_turn_to_caller({"payload": {"type": "choice", "text": "Pick", "options": []}})
    assert hands_turn_to_caller({"payload": {"type": "dropdown", "text": "Pick", "options": []}})
    assert not hands_turn_to_caller(text("Is it? Yes, it is."))
    assert not hands_turn_to_caller(text("Done."))
    assert not hands_turn_to_caller({"payload": {"type": "image", "imageUrl": "x?"}})


def test_the_learned_window() -> None:
    assert learned_window_s([0.0] * (MIN_SAMPLES - 1)) == INITIAL_S  # not enough seen yet
    assert learned_window_s([0.0] * MIN_SAMPLES) == 0.0  # one message per turn: no wait
    learned = learned_window_s([0.0] * MIN_SAMPLES + [0.1] * 5)
    assert learned == pytest.approx(0.1 + MARGIN_S)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server, url = Launcher().redis()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def botsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotsimProcess]:
    path = Path(tmp_path_factory.mktemp("scenario")) / "end_of_turn.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    with spawn_botsim("--scenario", str(path)) as sim:
        yield sim


class Bridge:
    """A worker's turn handler and an edge's reply server, in this process."""

    def __init__(self, redis: Redis, settings: WorkerSettings) -> None:
        self.redis = redis
        self.chat_url = settings.chat_url
        self.store = CallStore(redis)
        self.window = QuietWindow(redis, settings.chat_url, settings.bot_quiet_s)
        self.bot = BotpressClient(settings.chat_url)
        self.sender = ReplySender(TOKEN, settings.deliver_timeout_s)
        self.handler = TurnHandler(settings, self.store, self.bot, self.sender, self.window)
        self.waiters = ReplyWaiters()
        self.reply_to = ""
        self.calls = 0

    async def turn(self, words: str, sid: str | None = None, seq: int = 1) -> pb.TurnReply:
        """One spoken turn of a call (its opening turn first when the call is new)."""
        if sid is None:
            self.calls = next(CALLS)  # unique across bridges: they share one Redis
            sid = f"CA{self.calls:032d}"
            await self.turn("", sid, 0)
        kind = pb.TurnRequest.CALL_START if seq == 0 else pb.TurnRequest.SPEECH
        turn = pb.TurnRequest(
            turn_id=f"{sid}:{seq}",
            call_sid=sid,
            seq=seq,
            kind=kind,
            text=words,
            from_number=f"+1415555{self.calls:04d}",
            reply_to=self.reply_to,
        )
        waiting = self.waiters.expect(turn.turn_id)
        await self.store.submit(turn, sid)
        await self.handler.run(None, turn)
        return await asyncio.wait_for(waiting, 5)

    async def late_said(self, sid: str, count: int) -> list[str]:
        """What the call's late replies will say, once `count` of them were kept."""
        key = keys.late_replies(sid)
        await poll_until(lambda: self.redis.llen(key), lambda n: n >= count, 5.0)
        return [
            s
            for raw in await self.redis.lrange(key, 0, -1)
            for s in pb.TurnReply.FromString(raw).say
        ]

    async def aclose(self) -> None:
        await self.handler.aclose()
        await self.sender.aclose()
        await self.bot.aclose()


MakeBridge = Callable[[str], Awaitable[Bridge]]


@pytest.fixture()
async def bridge_for(redis_url: str, botsim: BotsimProcess) -> AsyncIterator[MakeBridge]:
    redis = connect(redis_url, socket_timeout_s=5.0)
    await redis.flushdb()
    waiters_server: list[tuple[Bridge, grpc.aio.Server]] = []

    async def make(quiet: str) -> Bridge:
        settings = WorkerSettings.from_env(
            {"REDIS_URL": redis_url, "BOTPRESS_CHAT_URL": botsim.base_url, "BOT_QUIET_MS": quiet}
        )
        bridge = Bridge(redis, settings)
        server, port = await create_grpc_server(bridge.waiters, "127.0.0.1", TOKEN)
        bridge.reply_to = f"127.0.0.1:{port}"
        waiters_server.append((bridge, server))
        return bridge

    yield make
    for bridge, server in waiters_server:
        await bridge.aclose()
        await server.stop(grace=None)
    await redis.aclose()


async def test_a_question_ends_the_reply_and_what_follows_is_kept(bridge_for: MakeBridge) -> None:
    bridge = await bridge_for("3000")  # a long fixed window: only the rule can end it early
    reply = await bridge.turn("ask me")
    assert list(reply.say) == ["Shall I go on?"]
    assert await bridge.late_said(reply.call_sid, 1) == ["Said after the question."]


async def test_a_choice_ends_the_reply(bridge_for: MakeBridge) -> None:
    bridge = await bridge_for("3000")
    reply = await bridge.turn("pick one")
    assert list(reply.say) == ["Which one You can say Red."]
    assert [o.label for o in reply.options] == ["Red"]
    assert await bridge.late_said(reply.call_sid, 1) == ["Said after the choice."]


async def test_a_hangup_ends_the_reply(bridge_for: MakeBridge) -> None:
    bridge = await bridge_for("3000")
    reply = await bridge.turn("bye now")
    assert reply.hangup and list(reply.say) == ["Goodbye."]


async def test_a_fixed_window_is_honoured(bridge_for: MakeBridge) -> None:
    wide = await bridge_for("400")
    assert list((await wide.turn("two please")).say) == ["First part.", "Second part."]
    none = await bridge_for("0")
    reply = await none.turn("two please")
    assert list(reply.say) == ["First part."]
    # The second message came after the reply went out: kept, spoken at the next webhook.
    assert await none.late_said(reply.call_sid, 1) == ["Second part."]


async def test_the_window_learns_a_gap_it_saw_after_the_reply(bridge_for: MakeBridge) -> None:
    bridge = await bridge_for("auto")
    # Many one-message turns seen (by any worker): no wait at all.
    await bridge.redis.lpush(keys.bot_turn_gaps(bridge.chat_url), *([0.0] * MIN_SAMPLES))
    await bridge.window.sync()
    assert bridge.window.seconds == 0.0
    first = await bridge.turn("two please")
    assert list(first.say) == ["First part."]
    assert await bridge.late_said(first.call_sid, 1) == ["Second part."]  # not lost
    await poll_until(bridge.window.sync, lambda _: bridge.window.seconds > 0.1, 5.0)
    assert bridge.window.seconds == pytest.approx(0.1 + MARGIN_S, abs=0.05)
    # Learned: both messages in one answer now.
    again = await bridge.turn("two please")
    assert list(again.say) == ["First part.", "Second part."]
