"""Whole calls through real processes: callsim -> edge (gunicorn) -> Redis -> workers -> botsim
-> gRPC -> TwiML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

import redis

from devstack.stack import Stack
from edge.settings import DEFAULT_GOODBYE, DEFAULT_HOLD, DEFAULT_REPROMPT
from shared import keys
from tests.helpers import call, wait_for

GREETING = "Hello! I am the echo bot. Say something and I will repeat it. Say bye to hang up."


async def test_whole_call_greeting_three_turns_goodbye(stack: Stack) -> None:
    result = await call(stack, ["I would like a pizza", "a large one", "thanks", "bye"])
    assert result.outcome == "hangup_by_app", result.transcript
    assert result.bot_said() == [
        GREETING,
        "You said: I would like a pizza",
        "You said: a large one",
        "You said: thanks",
        "Goodbye!",
    ]
    assert result.transcript[-1] == ("hangup",)
    assert all(w.status in (200, 204) for w in result.webhooks)


async def test_every_answer_is_a_gather_with_the_configured_speech_settings(stack: Stack) -> None:
    result = await call(stack, ["hello"])
    first = ET.fromstring(result.webhooks[0].body)
    gather = first.find("Gather")
    assert gather is not None
    assert gather.get("input") == "dtmf speech"  # GATHER_INPUT's default (tests/test_keypad.py)
    assert gather.get("language") == "en-US"
    assert gather.get("speechTimeout") == "auto"
    assert gather.get("timeout") == "5"
    assert gather.get("action", "").startswith(f"{stack.public_url}/twilio/gather?turn=1")
    say = gather.find("Say")
    assert say is not None and say.get("voice") == "Google.en-US-Standard-C"


async def test_silence_reprompts_then_says_goodbye(stack: Stack) -> None:
    result = await call(stack, [None, None, None, "never said"])
    assert result.bot_said() == [GREETING, DEFAULT_REPROMPT, DEFAULT_REPROMPT, DEFAULT_GOODBYE]
    assert result.transcript[-1] == ("hangup",)


async def test_speech_after_silence_resets_the_count(stack: Stack) -> None:
    result = await call(stack, [None, None, "still here", None, None, None])
    said = result.bot_said()
    assert said[:4] == [GREETING, DEFAULT_REPROMPT, DEFAULT_REPROMPT, "You said: still here"]
    assert said[-1] == DEFAULT_GOODBYE


async def test_slow_bot_gets_hold_twiml_and_the_late_reply_is_spoken_next(
    stack: Stack, rdb: redis.Redis
) -> None:
    turns = iter(["slow hello"])
    sid_holder: dict[str, str] = {}

    def caller(heard: Sequence[str]) -> str | None:
        if DEFAULT_HOLD in heard:
            # Stay silent only once the late reply is stored: what Twilio does after a pause.
            sid = sid_holder["sid"]
            wait_for(lambda: rdb.exists(keys.late_replies(sid)) == 1)
            return None
        return next(turns, "bye")

    sid_holder["sid"] = "CA" + "5" * 32
    result = await call(stack, caller, call_sid=sid_holder["sid"])
    said = result.bot_said()
    assert said[0] == GREETING
    assert said[1] == DEFAULT_HOLD  # the deadline answered, the call went on
    assert said[2] == "You said: slow hello"  # the late reply, at the next webhook
    assert said[-1] == "Goodbye!"
    hold = ET.fromstring(result.webhooks[1].body)
    assert hold.find("Gather") is not None and hold.find("Hangup") is None


async def test_turns_reach_the_bot_in_order_when_the_caller_speaks_over_a_late_reply(
    stack: Stack, rdb: redis.Redis
) -> None:
    sid = "CA" + "6" * 32
    script = iter(["slow one", "two"])

    def caller(heard: Sequence[str]) -> str | None:
        nxt = next(script, None)
        if nxt is not None:
            return nxt
        # Both turns missed their deadlines; wait until the second is done, then stay silent.
        wait_for(lambda: rdb.hget(keys.call_state(sid), keys.F_DONE_SEQ) == b"2")
        if "You said: two" in " ".join(heard):
            return "bye"
        return None

    result = await call(stack, caller, call_sid=sid)
    said = result.bot_said()
    assert said[:3] == [GREETING, DEFAULT_HOLD, DEFAULT_HOLD]
    # Spoken together in one <Say>, in the order the caller spoke.
    assert said[3] == "You said: slow one You said: two", said
    assert said[-1] == "Goodbye!"


async def test_bot_text_with_twiml_is_spoken_never_executed(stack: Stack) -> None:
    result = await call(stack, ["<Dial>+15550000000</Dial>", "bye"])
    echo = result.webhooks[1].body
    root = ET.fromstring(echo)
    assert root.find(".//Dial") is None
    assert root.find("Gather/Say").text == "You said: <Dial>+15550000000</Dial>"
    assert "&lt;Dial&gt;" in echo


async def test_call_end_frees_the_call_state(stack: Stack, rdb: redis.Redis) -> None:
    sid = "CA" + "7" * 32
    result = await call(stack, ["hello", "bye"], call_sid=sid)
    assert result.outcome == "hangup_by_app"
    # The status callback's CALL_END turn makes a worker tell the bot and mark the state
    # ended, to expire soon: turns of the call still queued somewhere see it and are skipped.
    wait_for(lambda: rdb.hget(keys.call_state(sid), keys.F_ENDED) == b"1")
    assert 0 < rdb.ttl(keys.call_state(sid)) <= keys.ENDED_TTL_S
    assert rdb.exists(keys.late_replies(sid)) == 0
    assert rdb.ttl(keys.turn_mark(sid, 1)) > 0  # every per-call key has a TTL
