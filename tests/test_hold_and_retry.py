"""No dead air after the hold phrase (/twilio/wait), and Twilio's webhook retries.

A late turn's hold TwiML listens one second, then redirects to /twilio/wait, which speaks the
late reply as soon as the worker keeps it. A webhook Twilio sends again (same body, signature and
I-Twilio-Idempotency-Token) gets the turn's real reply, and the bot sees the caller once.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
import redis
from aiohttp import web

from callsim.call import IDEMPOTENCY_HEADER, Event, WebhookRetry, place_call
from callsim.script import HANG_UP, Reply
from callsim.signing import SIGNATURE_HEADER, sign
from devstack.stack import Stack, StackConfig
from edge.settings import DEFAULT_HOLD, DEFAULT_REPROMPT
from shared import keys
from shared.pb import voicebridge_pb2 as pb
from tests.helpers import Response, call, fetch, start_stack, wait_for
from worker.settings import DEFAULT_FALLBACK

GREETING = "Hello! I am the echo bot. Say something and I will repeat it. Say bye to hang up."
#: How soon after the bot answers a silent caller must hear a late reply.
HEARD_WITHIN_S = 1.5


def _bot_message_times(stack: Stack, rdb: redis.Redis, from_number: str, sid: str) -> dict:
    """text -> botsim's createdAt (unix s) of the bot's messages in the call's conversation."""
    key = rdb.get(keys.caller_key("tel-" + from_number.lstrip("+")))
    assert key, "no caller key stored"
    resp = fetch(
        f"{stack.chat_url}/conversations/{sid}/messages",
        headers={"x-user-key": key.decode()},
        timeout_s=5,
    )
    assert resp.status_code == 200, resp.text
    out = {}
    for m in resp.json()["messages"]:
        text = (m.get("payload") or {}).get("text")
        if text:
            out[text] = datetime.fromisoformat(m["createdAt"].replace("Z", "+00:00")).timestamp()
    return out


def _turn_counts(stack: Stack, sid: str) -> dict[str, int]:
    """botsim's count of user messages per voicebridge turnId, for the call `sid`."""
    resp = fetch(f"{stack.chat_url}/_botsim/turns", timeout_s=5)
    assert resp.status_code == 200, resp.text
    counts: dict[str, int] = {}
    for conv in resp.json()["conversations"].values():
        for tid, n in conv["turnIds"].items():
            if tid.startswith(f"{sid}:"):
                counts[tid] = counts.get(tid, 0) + n
    return counts


async def test_a_silent_caller_hears_the_late_reply_within_a_second_of_the_bot(
    stack: Stack, rdb: redis.Redis
) -> None:
    sid, number = "CA" + "a1" * 16, "+14155550911"
    heard_at: dict[str, float] = {}

    def on_event(event: Event) -> None:
        if event[0] == "bot_say":
            heard_at.setdefault(event[1], time.time())

    def caller(heard: Sequence[str]) -> Reply:
        said = " ".join(heard)
        if GREETING in said:
            return "slow hello"  # botsim takes 2.5 s, the deadline is 1 s
        if "You said: slow hello" in said:
            return "bye"
        return None  # silent through the hold: no fixed wait, nothing awaited

    result = await call(stack, caller, call_sid=sid, from_number=number, on_event=on_event)
    said = result.bot_said()
    assert said[:3] == [GREETING, DEFAULT_HOLD, "You said: slow hello"], said
    assert DEFAULT_REPROMPT not in said  # wait loops are not silent turns
    assert said[-1] == "Goodbye!"
    kinds = [(w.kind, urlsplit(w.url).path) for w in result.webhooks]
    assert ("redirect", "/twilio/wait") in kinds
    bot_at = _bot_message_times(stack, rdb, number, sid)["You said: slow hello"]
    delay_s = heard_at["You said: slow hello"] - bot_at
    print(f"late reply heard {delay_s * 1000:.0f} ms after the bot answered")
    assert 0 < delay_s < HEARD_WITHIN_S, delay_s


async def test_the_caller_can_speak_over_the_hold(stack: Stack) -> None:
    script = iter(["slow one", "two"])

    def caller(heard: Sequence[str]) -> Reply:
        said = " ".join(heard)
        if "You said: two" in said:
            return "bye"
        return next(script, None)

    result = await call(stack, caller)
    said = result.bot_said()
    assert said[:2] == [GREETING, DEFAULT_HOLD], said
    hold = ET.fromstring(result.webhooks[1].body)
    gather, redirect = hold.find("Gather"), hold.find("Redirect")
    assert gather is not None and redirect is not None
    assert gather.get("timeout") == "1" and gather.get("actionOnEmptyResult") is None
    action = parse_qs(urlsplit(gather.get("action", "")).query)
    assert action == {"turn": ["2"], "silent": ["0"]}
    assert redirect.text == f"{stack.public_url}/twilio/wait?turn=2&loop=1"
    # "two" was heard over the hold: the bot answered it, after the late "slow one".
    assert result.webhooks[2].kind == "gather"
    assert result.webhooks[2].params.get("SpeechResult") == "two"
    assert any("You said: slow one" in s for s in said) and "You said: two" in " ".join(said)
    assert DEFAULT_REPROMPT not in said


def _post_wait(stack: Stack, sid: str, query: str, signed: bool = True) -> Response:
    form = {
        "CallSid": sid,
        "AccountSid": stack.config.account_sid,
        "From": "+14155550100",
        "To": "+14155550199",
        "CallStatus": "in-progress",
    }
    url = f"{stack.public_url}/twilio/wait?{query}"
    return fetch(
        f"{stack.edge_url}/twilio/wait?{query}",
        method="POST",
        body=urlencode(form).encode(),
        headers={
            "X-Twilio-Signature": sign(url, form, stack.config.auth_token) if signed else "x",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


@pytest.fixture(scope="module")
def short_hold_stack() -> Iterator[Stack]:
    """Bot time-out 1.5 s past a 1 s deadline, waits of 100 ms: 25 wait loops at most."""
    s = start_stack(
        StackConfig(
            workers=1,
            botsim_args=("--latency-ms", "4000"),
            edge_env={"REPLY_DEADLINE_MS": "1000", "HOLD_WAIT_MS": "100", "BOT_TIMEOUT_MS": "1500"},
            worker_env={"BOT_TIMEOUT_MS": "1500", "BOT_QUIET_MS": "50"},
        )
    )
    yield s
    s.stop()


def test_the_hold_loop_is_bounded_then_the_usual_silence_handling(
    short_hold_stack: Stack,
) -> None:
    stack, sid = short_hold_stack, "CA" + "b2" * 16
    max_loops = 25  # ceil((1.5 - 1.0 + 2) s / 0.1 s)
    query, loops = "turn=1&loop=1", 0
    while True:
        resp = _post_wait(stack, sid, query)
        assert resp.status_code == 200, resp.text
        loops += 1
        doc = ET.fromstring(resp.text)
        redirect = doc.find("Redirect")
        if redirect is None:
            break
        assert doc.find("Gather") is not None  # the caller can speak between the waits
        assert loops < max_loops, "the hold loop did not end"
        query = urlsplit(redirect.text or "").query
    assert loops == max_loops
    assert doc.find("Gather/Say") is not None
    assert doc.find("Gather/Say").text == DEFAULT_REPROMPT  # type: ignore[union-attr]
    assert "silent=1" in (doc.find("Gather").get("action") or "")  # type: ignore[union-attr]
    for bad in ("turn=1&loop=26", "turn=1&loop=0", "turn=0&loop=1", "turn=1", "turn=1&loop=x"):
        assert _post_wait(stack, sid, bad).status_code == 400, bad
    assert _post_wait(stack, sid, "turn=1&loop=1", signed=False).status_code == 403


async def test_a_bot_that_times_out_is_followed_by_the_fallback_not_an_endless_hold(
    short_hold_stack: Stack,
) -> None:
    def caller(heard: Sequence[str]) -> Reply:
        return HANG_UP if DEFAULT_FALLBACK in heard else None

    result = await call(short_hold_stack, caller)
    said = result.bot_said()
    # The greeting misses the deadline (bot 4 s): hold, then the worker's fallback at 1.5 s.
    assert said[:2] == [DEFAULT_HOLD, DEFAULT_FALLBACK], said
    assert result.outcome == "caller_hung_up"


@pytest.fixture(scope="module")
def retry_stack() -> Iterator[Stack]:
    """Two edge processes (a retry may land on either), a bot that answers in 1.2 s, well
    within the 3 s deadline, and a retry after 0.4 s."""
    s = start_stack(
        StackConfig(
            workers=1,
            edge_workers=2,
            botsim_args=("--latency-ms", "1200"),
            edge_env={"REPLY_DEADLINE_MS": "3000"},
            worker_env={"BOT_QUIET_MS": "50"},
        )
    )
    yield s
    s.stop()


@pytest.mark.parametrize("cut_first", [False, True], ids=["first-waits", "first-cut"])
async def test_a_retried_webhook_gets_the_real_reply_once(
    retry_stack: Stack, cut_first: bool
) -> None:
    retry = WebhookRetry(after_s=0.4, cut_first=cut_first)

    async def one_call(n: int) -> None:
        sid = f"CA{n:02d}" + ("c" if cut_first else "d") * 30
        result = await call(retry_stack, ["hello", "bye"], call_sid=sid, retry=retry)
        said = result.bot_said()
        assert said == [GREETING, "You said: hello", "Goodbye!"], (sid, said)
        gathers = [w for w in result.webhooks if w.kind == "gather"]
        assert gathers and all(w.retried_at > 0 for w in gathers)  # every one was retried
        counts = _turn_counts(retry_stack, sid)
        assert counts.get(f"{sid}:1") == 1 and counts.get(f"{sid}:2") == 1, counts

    # A few calls at once: retries land on either edge process.
    await asyncio.gather(*(one_call(n) for n in range(4)))


def test_callsim_retry_option_is_on_the_command_line() -> None:
    from callsim.cli import build_parser

    args = build_parser().parse_args(
        ["call", "--url", "http://x/twilio/voice", "--retry-webhooks", "0.5"]
    )
    assert args.retry_webhooks == 0.5 and not args.retry_keep_first


async def _serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.parametrize("cut_first", [False, True], ids=["first-waits", "first-cut"])
async def test_callsim_retries_a_webhook_as_twilio_does(cut_first: bool) -> None:
    """The retry is the same request: same body, signature and I-Twilio-Idempotency-Token; a
    cut first attempt's connection is closed, one left waiting stays open; its answer is unused."""
    seen: list[tuple[bytes, str, str]] = []
    first_closed = asyncio.Event()
    gather = '<Response><Gather input="speech" action="/g"><Say>hi</Say></Gather></Response>'

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/voice":
            return web.Response(text=gather, content_type="application/xml")
        seen.append(
            (
                await request.read(),
                request.headers.get(SIGNATURE_HEADER, ""),
                request.headers.get(IDEMPOTENCY_HEADER, ""),
            )
        )
        if len(seen) == 1:  # the first attempt: answered only after the retry was sent
            give_up = time.monotonic() + 5
            while time.monotonic() < give_up:
                transport = request.transport
                if transport is None or transport.is_closing():
                    first_closed.set()
                    break
                if not cut_first and len(seen) == 2:
                    break  # the retry came: the first may answer now, unheard
                await asyncio.sleep(0.02)
            return web.Response(text="<Response><Say>first</Say></Response>")
        return web.Response(text="<Response><Say>retry</Say><Hangup/></Response>")

    runner = await _serve(handler)
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as client:
            result = await place_call(
                client,
                f"http://127.0.0.1:{port}/voice",
                account_sid="AC" + "0" * 32,
                auth_token="token",
                caller=["hello"],
                retry=WebhookRetry(after_s=0.2, cut_first=cut_first),
            )
            assert result.bot_said() == ["hi", "retry"]
            assert len(seen) == 2 and seen[0] == seen[1] and seen[0][2], seen
            assert b"SpeechResult=hello" in seen[0][0]
            if cut_first:
                await asyncio.wait_for(first_closed.wait(), 5)
            else:
                assert not first_closed.is_set()
    finally:
        await runner.cleanup()


def _post_form(stack: Stack, path_query: str, form: dict[str, str]) -> Response:
    return fetch(
        f"{stack.edge_url}{path_query}",
        method="POST",
        body=urlencode(form).encode(),
        timeout_s=20,
        headers={
            "X-Twilio-Signature": sign(
                f"{stack.public_url}{path_query}", form, stack.config.auth_token
            ),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


def _answered_call(stack: Stack, sid: str, caller: str) -> dict[str, str]:
    """The call's voice webhook answered (the greeting heard): the form of its turn 1, the
    caller saying "hello"."""
    form = {
        "CallSid": sid,
        "AccountSid": stack.config.account_sid,
        "From": caller,
        "To": "+14155550199",
        "CallStatus": "in-progress",
    }
    assert GREETING in _post_form(stack, "/twilio/voice", form).text
    return {**form, "SpeechResult": "hello", "Confidence": "0.9"}


async def test_an_attempt_superseded_from_another_process_hands_its_reply_to_the_retry(
    retry_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    """The cross-process half of the rule, made deterministic: a retry elsewhere overwrites the
    turn mark while the first attempt waits; the first gets the reply, gives it back as late
    (answering hold TwiML nobody hears), and the retry (here) takes it as its answer."""
    rdb, sid = redis_for(retry_stack), "CA" + "e5" * 16
    spoke = _answered_call(retry_stack, sid, "+14155550912")
    first = asyncio.create_task(
        asyncio.to_thread(_post_form, retry_stack, "/twilio/gather?turn=1&silent=0", spoke)
    )
    mark = keys.turn_mark(sid, 1)
    await asyncio.to_thread(wait_for, lambda: rdb.exists(mark) == 1, 5)
    rdb.set(mark, "10.0.0.9:50051/another-process", xx=True, keepttl=True)
    answered = await first
    assert DEFAULT_HOLD in answered.text and "You said" not in answered.text, answered.text
    late = [pb.TurnReply.FromString(b) for b in rdb.lrange(keys.late_replies(sid), 0, -1)]
    assert [(r.turn_id, list(r.say)) for r in late] == [(f"{sid}:1", ["You said: hello"])]
    retried = await asyncio.to_thread(
        _post_form, retry_stack, "/twilio/gather?turn=1&silent=0", spoke
    )
    assert "You said: hello" in retried.text and DEFAULT_HOLD not in retried.text, retried.text
    assert rdb.exists(keys.late_replies(sid)) == 0
    assert _turn_counts(retry_stack, sid).get(f"{sid}:1") == 1


async def test_a_retry_after_the_first_attempt_answered_gets_that_answer_again(
    retry_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    """Twilio gave up on the first attempt (left waiting, its answer ignored) and retried after
    that attempt had answered with the real reply: the retry answers the same, not the hold
    phrase (the reply was spent on an answer nobody heard). The bot saw the words once."""
    rdb, sid = redis_for(retry_stack), "CA" + "e6" * 16
    spoke = _answered_call(retry_stack, sid, "+14155550913")
    first = await asyncio.to_thread(
        _post_form, retry_stack, "/twilio/gather?turn=1&silent=0", spoke
    )
    assert "You said: hello" in first.text, first.text
    retried = await asyncio.to_thread(
        _post_form, retry_stack, "/twilio/gather?turn=1&silent=0", spoke
    )
    assert "You said: hello" in retried.text and DEFAULT_HOLD not in retried.text, retried.text
    assert _turn_counts(retry_stack, sid).get(f"{sid}:1") == 1
    assert rdb.ttl(keys.turn_answer(sid, 1)) <= keys.ANSWER_TTL_S
