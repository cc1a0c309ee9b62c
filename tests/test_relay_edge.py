"""Relay voice mode (ConversationRelay), the edge's side, through real processes: the edge under
gunicorn in VOICE_MODE=relay, a real WebSocket client playing Twilio, redis-server, workers and
botsim; or, where the exact parts of a streamed reply matter, no worker at all and the test
answering each turn over the edge's own gRPC service as a worker would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import aiohttp
import grpc
import pytest
import redis
from twilio.request_validator import RequestValidator

from devstack.stack import Stack, StackConfig
from edge.relay_session import WORDS_PER_S
from edge.settings import DEFAULT_GOODBYE, DEFAULT_HOLD, DEFAULT_REPROMPT
from shared import keys
from shared.pb import voicebridge_pb2 as pb
from shared.pb import voicebridge_pb2_grpc as pb_grpc
from shared.rpc import TOKEN_METADATA_KEY
from tests.helpers import call, fetch, start_stack

GREETING = "Hello! I am the echo bot. Say something and I will repeat it. Say bye to hang up."
DEADLINE_MS = 1000
SLOW_MS = 2500
FRAME_TIMEOUT_S = 20.0


# -- stacks -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relay_stack() -> Iterator[Stack]:
    """Relay mode with a worker and botsim: 'slow ...' turns miss the 1 s deadline."""
    s = start_stack(
        StackConfig(
            workers=1,
            botsim_args=("--slow-ms", str(SLOW_MS)),
            edge_env={"VOICE_MODE": "relay", "REPLY_DEADLINE_MS": str(DEADLINE_MS)},
            worker_env={"BOT_QUIET_MS": "100"},
            extra_env={"BOT_TIMEOUT_MS": "8000"},
        )
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def bare_stack() -> Iterator[Stack]:
    """Relay mode with no worker: the test is the worker (it reads turns, delivers parts)."""
    s = start_stack(
        StackConfig(
            workers=0,
            edge_env={
                "VOICE_MODE": "relay",
                "REPLY_DEADLINE_MS": str(DEADLINE_MS),
                "TIMEOUT": "1",
                "MAX_SILENT_TURNS": "2",
            },
        )
    )
    yield s
    s.stop()


# -- Twilio's side ------------------------------------------------------------------------------
def relay_url(stack: Stack) -> str:
    return stack.public_url.replace("http://", "ws://", 1) + "/twilio/relay"


def sign(stack: Stack, url: str, params: dict[str, str] | None = None) -> str:
    return str(RequestValidator(stack.config.auth_token).compute_signature(url, params or {}))


def new_sid(tag: int) -> str:
    return f"CA{tag:032x}"


class Relay:
    """The WebSocket as Twilio's ConversationRelay holds it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def setup(self, stack: Stack, call_sid: str, account_sid: str | None = None) -> None:
        await self.send(
            {
                "type": "setup",
                "sessionId": "VX" + call_sid[2:],
                "accountSid": account_sid or stack.config.account_sid,
                "callSid": call_sid,
                "from": "+14155550100",
                "to": "+14155550199",
                "direction": "inbound",
                "callStatus": "RINGING",
                "customParameters": {"callSid": call_sid},
            }
        )

    async def prompt(self, text: str) -> None:
        await self.send({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True})

    async def frame(self, timeout_s: float = FRAME_TIMEOUT_S) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout_s)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        frame = json.loads(msg.data)
        assert frame["type"] in ("text", "end"), frame  # the only frames the edge sends
        return frame

    async def cycle(self, timeout_s: float = FRAME_TIMEOUT_S) -> str:
        """Tokens up to the talk cycle's last:true (whose token is the reply's last text, or
        empty), joined as Twilio speaks them."""
        tokens = []
        while True:
            frame = await self.frame(timeout_s)
            assert frame["type"] == "text", frame
            assert isinstance(frame["token"], str) and isinstance(frame["last"], bool)
            tokens.append(frame["token"])
            if frame["last"]:
                return "".join(tokens)
            assert frame["token"], "an empty token with last:false"


@asynccontextmanager
async def relay(stack: Stack, signature: str | None = None) -> AsyncIterator[Relay]:
    url = relay_url(stack)
    headers = {"X-Twilio-Signature": sign(stack, url) if signature is None else signature}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers=headers, autoping=True) as ws:
            yield Relay(ws)


def post_webhook(stack: Stack, path: str, params: dict[str, str], signed: bool = True) -> Any:
    url = f"{stack.public_url}{path}"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signed:
        headers["X-Twilio-Signature"] = sign(stack, url, params)
    return fetch(
        f"{stack.edge_url}{path}", method="POST", body=urlencode(params).encode(), headers=headers
    )


def call_params(stack: Stack, sid: str, **extra: str) -> dict[str, str]:
    return {
        "CallSid": sid,
        "AccountSid": stack.config.account_sid,
        "From": "+14155550100",
        "To": "+14155550199",
        "Direction": "inbound",
        **extra,
    }


def turns_of(rdb: redis.Redis, sid: str) -> list[pb.TurnRequest]:
    entries = rdb.xrange(keys.TURN_STREAM)
    turns = [pb.TurnRequest.FromString(fields[keys.TURN_FIELD]) for _, fields in entries]
    return [t for t in turns if t.call_sid == sid]


async def until(condition: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
    return result


async def turn_written(rdb: redis.Redis, sid: str, seq: int) -> pb.TurnRequest:
    found = await until(lambda: [t for t in turns_of(rdb, sid) if t.seq == seq])
    return found[0]


class FakeWorker:
    """Delivers replies to the edge over its gRPC service, as a worker does."""

    def __init__(self, stack: Stack) -> None:
        self._token = stack.grpc_token
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def deliver(self, turn: pb.TurnRequest, **fields: Any) -> pb.DeliverAck:
        channel = self._channels.get(turn.reply_to)
        if channel is None:
            channel = self._channels[turn.reply_to] = grpc.aio.insecure_channel(turn.reply_to)
        reply = pb.TurnReply(turn_id=turn.turn_id, call_sid=turn.call_sid, seq=turn.seq, **fields)
        stub = pb_grpc.EdgeRepliesStub(channel)
        return await stub.Deliver(reply, timeout=5, metadata=((TOKEN_METADATA_KEY, self._token),))

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()


@pytest.fixture()
async def worker(bare_stack: Stack) -> AsyncIterator[FakeWorker]:
    fake = FakeWorker(bare_stack)
    yield fake
    await fake.aclose()


# -- the voice webhook and the action -----------------------------------------------------------
def test_voice_webhook_connects_a_conversation_relay(relay_stack: Stack) -> None:
    sid = new_sid(0x101)
    resp = post_webhook(relay_stack, "/twilio/voice", call_params(relay_stack, sid))
    assert resp.status_code == 200, resp.text
    root = ET.fromstring(resp.text)
    connect = root.find("Connect")
    assert connect is not None and root.find("Gather") is None
    assert connect.get("action") == f"{relay_stack.public_url}/twilio/relay-action"
    conversation = connect.find("ConversationRelay")
    assert conversation is not None
    assert conversation.get("url") == relay_url(relay_stack)
    assert conversation.get("interruptible") == "any"
    assert conversation.get("dtmfDetection") == "true"
    assert conversation.get("language") == "en-US"
    # No greeting of Twilio's (the bot's is the call-start turn), no voice the operator didn't set.
    for unset in ("welcomeGreeting", "voice", "ttsProvider", "transcriptionProvider"):
        assert conversation.get(unset) is None, unset
    parameters = {p.get("name"): p.get("value") for p in conversation.findall("Parameter")}
    assert parameters["callSid"] == sid
    assert parameters["from"] == "+14155550100" and parameters["to"] == "+14155550199"


def test_relay_action_answers_every_session_status(relay_stack: Stack) -> None:
    sid = new_sid(0x102)
    path = "/twilio/relay-action"
    base = call_params(relay_stack, sid, SessionId="VX1", SessionDuration="12")

    completed = post_webhook(relay_stack, path, {**base, "SessionStatus": "completed"})
    assert completed.status_code == 200
    root = ET.fromstring(completed.text)
    assert root.tag == "Response" and len(root) == 0

    handoff = json.dumps({"reason": "hangup"})
    ended = post_webhook(
        relay_stack, path, {**base, "SessionStatus": "ended", "HandoffData": handoff}
    )
    assert [child.tag for child in ET.fromstring(ended.text)] == ["Hangup"]

    failed = post_webhook(
        relay_stack,
        path,
        {**base, "SessionStatus": "failed", "ErrorCode": "39001", "ErrorMessage": "Network"},
    )
    again = ET.fromstring(failed.text).find("Connect/ConversationRelay")
    assert again is not None and again.get("url") == relay_url(relay_stack)

    unsigned = post_webhook(relay_stack, path, {**base, "SessionStatus": "failed"}, signed=False)
    assert unsigned.status_code == 403


# -- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("signature", ["", "bad", "query"])
async def test_an_unsigned_upgrade_is_refused_and_writes_nothing(
    relay_stack: Stack, redis_for: Callable[[Stack], redis.Redis], signature: str
) -> None:
    rdb = redis_for(relay_stack)
    before = rdb.xlen(keys.TURN_STREAM) if rdb.exists(keys.TURN_STREAM) else 0
    if signature == "query":  # signed for another URL: the socket's with a query string
        signature = sign(relay_stack, relay_url(relay_stack) + "?callSid=CA1")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with relay(relay_stack, signature=signature):
            pass
    assert refused.value.status == 403
    after = rdb.xlen(keys.TURN_STREAM) if rdb.exists(keys.TURN_STREAM) else 0
    assert after == before


async def test_setup_from_another_account_closes_the_socket(
    relay_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    rdb = redis_for(relay_stack)
    sid = new_sid(0x103)
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, sid, account_sid="AC" + "9" * 32)
        msg = await twilio.ws.receive(timeout=FRAME_TIMEOUT_S)
        assert msg.type == aiohttp.WSMsgType.CLOSE, msg
        assert msg.data == 1008
    assert rdb.exists(keys.call_state(sid), keys.turn_mark(sid, 0)) == 0
    assert turns_of(rdb, sid) == []


# -- a call -------------------------------------------------------------------------------------
async def test_setup_greets_and_a_prompt_gets_the_reply(
    relay_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    rdb = redis_for(relay_stack)
    sid = new_sid(0x104)
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, sid)
        assert await twilio.cycle() == GREETING
        await twilio.prompt("I would like a pizza")
        assert await twilio.cycle() == "You said: I would like a pizza"
    start, speech = turns_of(rdb, sid)
    assert (start.kind, start.seq) == (pb.TurnRequest.CALL_START, 0)
    assert (speech.kind, speech.seq, speech.text) == (
        pb.TurnRequest.SPEECH,
        1,
        "I would like a pizza",
    )
    assert start.stream and speech.stream
    assert (start.from_number, start.to_number) == ("+14155550100", "+14155550199")
    # The session waits past the deadline for the bot's own time-out: so must the worker.
    assert speech.deadline_unix_ms - speech.created_unix_ms >= DEADLINE_MS + 8000


async def test_malformed_and_unknown_frames_keep_the_session(relay_stack: Stack) -> None:
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, new_sid(0x105))
        assert await twilio.cycle() == GREETING
        for bad in ("{not json", "[1, 2]", '"prompt"'):
            await twilio.send(bad)
        await twilio.send({"type": "info", "name": "agentSpeaking", "value": "off"})
        await twilio.send({"type": "error", "description": "Invalid message received"})
        await twilio.send({"type": "no-such-frame"})
        await twilio.send({"type": "prompt", "voicePrompt": "", "last": True})
        await twilio.send({"type": "dtmf", "digit": "x"})
        await twilio.prompt("still here")
        assert await twilio.cycle() == "You said: still here"


async def test_a_late_reply_holds_then_is_spoken_in_the_same_session(relay_stack: Stack) -> None:
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, new_sid(0x106))
        assert await twilio.cycle() == GREETING
        await twilio.prompt("slow hello")
        assert await twilio.cycle() == DEFAULT_HOLD
        assert await twilio.cycle() == "You said: slow hello"  # no new prompt needed


async def test_an_interrupt_tells_the_next_turn_what_the_caller_heard(
    relay_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    rdb = redis_for(relay_stack)
    sid = new_sid(0x107)
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, sid)
        assert await twilio.cycle() == GREETING
        await twilio.prompt("a long story")
        assert await twilio.cycle() == "You said: a long story"
        # Twilio was still speaking it when the caller cut in.
        await twilio.send(
            {
                "type": "interrupt",
                "utteranceUntilInterrupt": "You said",
                "durationUntilInterruptMs": "460",
            }
        )
        await twilio.prompt("never mind")
        assert await twilio.cycle() == "You said: never mind"
    nxt = [t for t in turns_of(rdb, sid) if t.seq == 2][0]
    assert (nxt.heard, nxt.heard_ms) == ("You said", 460)


async def test_an_interrupt_over_the_hold_phrase_keeps_the_reply(
    relay_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    rdb = redis_for(relay_stack)
    sid = new_sid(0x10C)
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, sid)
        assert await twilio.cycle() == GREETING
        await twilio.prompt("slow story")
        assert await twilio.cycle() == DEFAULT_HOLD
        await twilio.send(
            {"type": "interrupt", "utteranceUntilInterrupt": "One", "durationUntilInterruptMs": 90}
        )
        # No reply was cut off: it is spoken when it comes, as a late reply is in gather mode.
        assert await twilio.cycle() == "You said: slow story"
        await twilio.prompt("next")
        assert await twilio.cycle() == "You said: next"
    nxt = [t for t in turns_of(rdb, sid) if t.seq == 2][0]
    assert (nxt.heard, nxt.heard_ms) == ("", 0)


async def test_the_bot_s_hangup_ends_the_session_and_the_action_hangs_up(
    relay_stack: Stack,
) -> None:
    sid = new_sid(0x108)
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, sid)
        assert await twilio.cycle() == GREETING
        await twilio.prompt("bye")
        assert await twilio.cycle() == "Goodbye!"
        end = await twilio.frame()
    assert end["type"] == "end", end
    assert json.loads(end["handoffData"]) == {"reason": "hangup"}
    params = call_params(relay_stack, sid, SessionStatus="ended", HandoffData=end["handoffData"])
    answer = post_webhook(relay_stack, "/twilio/relay-action", params)
    assert [child.tag for child in ET.fromstring(answer.text)] == ["Hangup"]


async def test_a_new_session_of_the_call_goes_on_without_a_second_greeting(
    relay_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    """The session's socket is lost with a turn in flight (as when its edge process dies):
    Twilio posts `failed`, the action connects a new session, whose setup continues the call."""
    rdb = redis_for(relay_stack)
    sid = new_sid(0x109)
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, sid)
        assert await twilio.cycle() == GREETING
        await twilio.prompt("slow first")
        await turn_written(rdb, sid, 1)
    # Nobody waits for that reply any more: the worker keeps it as late.
    await until(lambda: rdb.exists(keys.late_replies(sid)))
    conversation = rdb.hget(keys.call_state(sid), keys.F_CONVERSATION)
    params = call_params(relay_stack, sid, SessionStatus="failed", ErrorCode="39001")
    answer = post_webhook(relay_stack, "/twilio/relay-action", params)
    assert ET.fromstring(answer.text).find("Connect/ConversationRelay") is not None
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, sid)
        assert await twilio.cycle() == "You said: slow first"  # the late reply, no greeting
        await twilio.prompt("second")
        assert await twilio.cycle() == "You said: second"
    turns = turns_of(rdb, sid)
    assert [t.seq for t in turns] == [0, 1, 2]
    assert [t.kind for t in turns].count(pb.TurnRequest.CALL_START) == 1
    assert rdb.hget(keys.call_state(sid), keys.F_CONVERSATION) == conversation


async def test_a_new_session_speaks_a_reply_kept_late_after_it_started_without_a_prompt(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    # The old session died with turn 1 at a worker; its Deliver fails only after the new
    # session's setup, so the reply is kept late then. The caller, silent, hears it at once,
    # not after TIMEOUT (10 s here) as a silence would bring it.
    stack = new_stack(
        workers=0,
        edge_env={"VOICE_MODE": "relay", "REPLY_DEADLINE_MS": "4000", "TIMEOUT": "10"},
    )
    rdb = redis_for(stack)
    sid = new_sid(0x10B)
    worker = FakeWorker(stack)
    async with relay(stack) as twilio:
        await twilio.setup(stack, sid)
        start = await turn_written(rdb, sid, 0)
        await worker.deliver(start, part=1, more=False, text="Hello.")
        assert await twilio.cycle() == "Hello."
        await twilio.prompt("slow one")
        pending = await turn_written(rdb, sid, 1)
    async with relay(stack) as twilio:
        await twilio.setup(stack, sid)
        ack = await worker.deliver(pending, part=1, more=False, text="Sorry, slow answer.")
        assert not ack.accepted  # its session is gone: the worker keeps it late
        kept = pb.TurnReply(call_sid=sid, seq=1, text="Sorry, slow answer.")
        pipe = rdb.pipeline(transaction=True)
        pipe.rpush(keys.late_replies(sid), kept.SerializeToString())
        pipe.hset(keys.call_state(sid), mapping={keys.F_HAS_LATE: 1, keys.F_DONE_SEQ: 1})
        pipe.execute()
        kept_at = time.monotonic()
        assert await twilio.cycle() == "Sorry, slow answer."
        assert time.monotonic() - kept_at < 3.0
    await worker.aclose()


async def test_a_killed_edge_s_call_goes_on_in_a_new_session(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack = new_stack(
        edge_env={"VOICE_MODE": "relay", "REPLY_DEADLINE_MS": str(DEADLINE_MS)},
        worker_env={"BOT_QUIET_MS": "100"},
    )
    rdb = redis_for(stack)
    sid = new_sid(0x10A)
    async with relay(stack) as twilio:
        await twilio.setup(stack, sid)
        assert await twilio.cycle() == GREETING
        await twilio.prompt("one")
        assert await twilio.cycle() == "You said: one"
        assert stack.edge is not None
        # SIGKILL the gunicorn process that holds the socket; the master starts another.
        (holder,) = child_pids(stack.edge.proc.pid)
        os.kill(holder, signal.SIGKILL)
        closed = await twilio.ws.receive(timeout=FRAME_TIMEOUT_S)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closed
    params = call_params(stack, sid, SessionStatus="failed", ErrorCode="39001")
    answer = post_webhook(stack, "/twilio/relay-action", params)
    assert ET.fromstring(answer.text).find("Connect/ConversationRelay") is not None
    async with relay(stack) as twilio:
        await twilio.setup(stack, sid)
        await twilio.prompt("two")
        assert await twilio.cycle() == "You said: two"  # no second greeting before it
    assert [t.seq for t in turns_of(rdb, sid)] == [0, 1, 2]


def child_pids(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry))
    return found


async def test_call_end_still_comes_from_the_status_callback(
    relay_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    rdb = redis_for(relay_stack)
    sid = new_sid(0x10D)
    async with relay(relay_stack) as twilio:
        await twilio.setup(relay_stack, sid)
        assert await twilio.cycle() == GREETING
    status = post_webhook(
        relay_stack, "/twilio/status", call_params(relay_stack, sid, CallStatus="completed")
    )
    assert status.status_code == 204
    await until(lambda: rdb.hget(keys.call_state(sid), keys.F_ENDED) == b"1")


# -- the streamed parts, exactly (the test is the worker) ----------------------------------------
async def test_parts_stream_as_tokens_and_an_interrupted_reply_is_stopped(
    bare_stack: Stack, redis_for: Callable[[Stack], redis.Redis], worker: FakeWorker
) -> None:
    rdb = redis_for(bare_stack)
    sid = new_sid(0x201)
    async with relay(bare_stack) as twilio:
        await twilio.setup(bare_stack, sid)
        start = await turn_written(rdb, sid, 0)
        assert (await worker.deliver(start, part=1, more=True, text="Hello")).accepted
        assert await twilio.frame() == {"type": "text", "token": "Hello", "last": False}
        ack = await worker.deliver(start, part=2, more=True, text="")  # nothing to say: skipped
        assert ack.accepted and not ack.stop
        await worker.deliver(start, part=3, more=False, text=", caller.")
        # The final part's text ends the talk cycle in the same frame.
        assert await twilio.frame() == {"type": "text", "token": ", caller.", "last": True}

        await twilio.prompt("tell me a story")
        story = await turn_written(rdb, sid, 1)
        await worker.deliver(story, part=1, more=True, text="Once upon")
        assert (await twilio.frame())["token"] == "Once upon"
        await twilio.send(
            {
                "type": "interrupt",
                "utteranceUntilInterrupt": "Once",
                "durationUntilInterruptMs": 310,
            }
        )
        # Wait for the edge to have taken the interrupt: the ack says stop from then on.
        ack = await worker.deliver(story, part=2, more=True, text=" a time")
        assert (ack.accepted, ack.stop) == (True, True)
        await twilio.prompt("something else")
        nxt = await turn_written(rdb, sid, 2)
        assert (nxt.heard, nxt.heard_ms) == ("Once", 310)
        ack = await worker.deliver(story, part=3, more=False, text=" there was.")
        assert (ack.accepted, ack.stop) == (True, True)
        # A worker that does not stream: one whole reply, part 0, sentences in `say`.
        await worker.deliver(nxt, say=["Sure.", "What else?"])
        assert await twilio.cycle() == "Sure. What else?"  # nothing of the story in between


async def test_an_interrupt_while_late_replies_lead_the_cycle_stops_the_turn_s_own_parts(
    bare_stack: Stack, redis_for: Callable[[Stack], redis.Redis], worker: FakeWorker
) -> None:
    # A turn's cycle starts with a reply that missed an earlier deadline; the caller cuts in
    # during it, before the turn's own first part came: that part must not be spoken either.
    rdb = redis_for(bare_stack)
    sid = new_sid(0x206)
    async with relay(bare_stack) as twilio:
        await twilio.setup(bare_stack, sid)
        start = await turn_written(rdb, sid, 0)
        await worker.deliver(start, part=1, more=False, text="Hello.")
        assert await twilio.cycle() == "Hello."
        late = pb.TurnReply(call_sid=sid, seq=0, say=["An earlier answer."])
        rdb.rpush(keys.late_replies(sid), late.SerializeToString())
        await twilio.prompt("hello")
        turn = await turn_written(rdb, sid, 1)
        assert (await twilio.frame())["token"] == "An earlier answer."
        await twilio.send({"type": "interrupt", "utteranceUntilInterrupt": "An"})
        ack = await worker.deliver(turn, part=1, more=True, text="Part one: you said hello.")
        assert (ack.accepted, ack.stop) == (True, True)
        await twilio.prompt("stop that")
        nxt = await turn_written(rdb, sid, 2)
        assert nxt.heard == "An"
        await worker.deliver(nxt, part=1, more=False, text="Stopped.")
        assert await twilio.cycle() == "Stopped."  # nothing of turn 1 before it


async def test_hold_then_reply_then_hangup_ends_after_speaking(
    bare_stack: Stack, redis_for: Callable[[Stack], redis.Redis], worker: FakeWorker
) -> None:
    rdb = redis_for(bare_stack)
    sid = new_sid(0x202)
    async with relay(bare_stack) as twilio:
        await twilio.setup(bare_stack, sid)
        start = await turn_written(rdb, sid, 0)
        assert await twilio.cycle() == DEFAULT_HOLD  # nothing by REPLY_DEADLINE_MS
        await worker.deliver(start, part=1, more=False, text="Hi, sorry for the wait.")
        assert await twilio.cycle() == "Hi, sorry for the wait."
        await twilio.prompt("bye")
        bye = await turn_written(rdb, sid, 1)
        said_at = time.monotonic()
        await worker.deliver(bye, part=1, more=False, text="Bye now, take care.", hangup=True)
        assert await twilio.cycle() == "Bye now, take care."
        end = await twilio.frame()
        assert end == {"type": "end", "handoffData": json.dumps({"reason": "hangup"})}
        # Not before the caller could have heard it (4 words).
        assert time.monotonic() - said_at >= 4 / WORDS_PER_S - 0.1


async def test_a_reply_nobody_waits_for_is_not_taken(
    bare_stack: Stack, redis_for: Callable[[Stack], redis.Redis], worker: FakeWorker
) -> None:
    rdb = redis_for(bare_stack)
    sid = new_sid(0x203)
    async with relay(bare_stack) as twilio:
        await twilio.setup(bare_stack, sid)
        start = await turn_written(rdb, sid, 0)
    # The socket closed: its waiters are gone, so the worker keeps the reply as late.
    ack = await until_ack(worker, start)
    assert not ack.accepted


async def until_ack(worker: FakeWorker, turn: pb.TurnRequest) -> pb.DeliverAck:
    deadline = time.monotonic() + 10
    while True:
        ack = await worker.deliver(turn, part=1, more=False, text="late")
        if not ack.accepted or time.monotonic() > deadline:
            return ack
        await asyncio.sleep(0.02)


async def test_keys_make_a_dtmf_turn(
    bare_stack: Stack, redis_for: Callable[[Stack], redis.Redis], worker: FakeWorker
) -> None:
    rdb = redis_for(bare_stack)
    sid = new_sid(0x204)
    async with relay(bare_stack) as twilio:
        await twilio.setup(bare_stack, sid)
        start = await turn_written(rdb, sid, 0)
        await worker.deliver(start, say=["Enter your number."])
        assert await twilio.cycle() == "Enter your number."
        for digit in "42#":
            await twilio.send({"type": "dtmf", "digit": digit})
        keyed = await turn_written(rdb, sid, 1)
        assert (keyed.kind, keyed.digits, keyed.stream) == (pb.TurnRequest.DTMF, "42", True)
        await twilio.send({"type": "dtmf", "digit": "7"})  # no '#': the pause ends it
        paused = await turn_written(rdb, sid, 2)
        assert (paused.kind, paused.digits) == (pb.TurnRequest.DTMF, "7")


async def test_silence_reprompts_then_says_goodbye_and_ends(
    bare_stack: Stack, redis_for: Callable[[Stack], redis.Redis], worker: FakeWorker
) -> None:
    rdb = redis_for(bare_stack)
    sid = new_sid(0x205)
    async with relay(bare_stack) as twilio:
        await twilio.setup(bare_stack, sid)
        start = await turn_written(rdb, sid, 0)
        await worker.deliver(start, say=["Hi."])
        assert await twilio.cycle() == "Hi."
        assert await twilio.cycle() == DEFAULT_REPROMPT  # MAX_SILENT_TURNS=2, TIMEOUT=1
        assert await twilio.cycle() == DEFAULT_GOODBYE
        end = await twilio.frame()
    assert end == {"type": "end", "handoffData": json.dumps({"reason": "silence"})}
    assert [t.seq for t in turns_of(rdb, sid)] == [0]  # silence never bothers the bot


async def test_silence_counts_from_the_last_reply_once_the_caller_answered(
    bare_stack: Stack, redis_for: Callable[[Stack], redis.Redis], worker: FakeWorker
) -> None:
    """A caller who answers a long reply at once has heard (or talked over) it: the silence
    after the next, short reply is TIMEOUT after that reply, not after the long one's estimate."""
    rdb = redis_for(bare_stack)
    sid = new_sid(0x2F1)
    long_reply = " ".join(["word"] * 40)  # 16 s to say at WORDS_PER_S
    async with relay(bare_stack) as twilio:
        await twilio.setup(bare_stack, sid)
        start = await turn_written(rdb, sid, 0)
        await worker.deliver(start, say=[long_reply])
        assert await twilio.cycle() == long_reply
        await twilio.prompt("hello")
        hello = await turn_written(rdb, sid, 1)
        await worker.deliver(hello, say=["Hi."])
        assert await twilio.cycle() == "Hi."
        spoken_at = time.monotonic()
        assert await twilio.cycle() == DEFAULT_REPROMPT  # TIMEOUT=1
    assert time.monotonic() - spoken_at < 40 / WORDS_PER_S / 2


# -- gather mode stays as it was ------------------------------------------------------------------
async def test_gather_mode_is_unchanged(new_stack: Callable[..., Stack]) -> None:
    stack = new_stack(worker_env={"BOT_QUIET_MS": "100"})
    result = await call(stack, ["hello", "bye"])
    assert result.bot_said() == [GREETING, "You said: hello", "Goodbye!"]
    first = ET.fromstring(result.webhooks[0].body)
    assert first.find("Gather") is not None and first.find("Connect") is None
