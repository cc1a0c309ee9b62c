"""The worker against botsim in each Chat API mode, with every payload type and with faults,
through the whole stack (callsim -> edge -> Redis -> worker -> botsim)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import redis

from devstack.stack import Stack
from shared import keys
from tests.helpers import Http, call
from worker.settings import DEFAULT_FALLBACK

ROOT = Path(__file__).resolve().parent.parent
GREETING = "Hello! I am the echo bot. Say something and I will repeat it. Say bye to hang up."


async def test_encryption_key_mode_signs_keys_and_stores_none(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack = new_stack(
        botsim_args=("--encryption-key", "s3cret"),
        worker_env={"BOTPRESS_ENCRYPTION_KEY": "s3cret", "BOT_QUIET_MS": "50"},
    )
    result = await call(stack, ["hello", "bye"])
    assert result.bot_said() == [GREETING, "You said: hello", "Goodbye!"]
    rdb = redis_for(stack)
    assert rdb.keys("vb:caller:*") == []  # nothing to store: keys are signed locally


async def test_shared_mode_keeps_one_user_per_caller_and_refreshes_a_stale_key(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack = new_stack(worker_env={"BOT_QUIET_MS": "50"})
    rdb = redis_for(stack)
    await call(stack, ["first call"], from_number="+14155550123")
    stored = rdb.get(keys.caller_key("tel-14155550123"))
    assert stored
    await call(stack, ["second call"], from_number="+14155550123")
    assert rdb.get(keys.caller_key("tel-14155550123")) == stored  # the returning caller's key
    # A key Botpress refuses (401) gets one fresh key and one retry; the call goes on.
    rdb.set(keys.caller_key("tel-14155550999"), "not-a-valid-jwt")
    result = await call(stack, ["still works"], from_number="+14155550999")
    assert result.bot_said()[1] == "You said: still works"


async def test_opening_turn_as_an_event(new_stack: Callable[..., Stack]) -> None:
    stack = new_stack(worker_env={"OPENING_MODE": "event", "BOT_QUIET_MS": "50"})
    result = await call(stack, ["hello", "bye"])
    # After an opening event the bot greets, and the first message is echoed, not greeted.
    assert result.bot_said() == [GREETING, "You said: hello", "Goodbye!"]


async def test_every_payload_type_is_spoken_and_options_become_hints(
    new_stack: Callable[..., Stack],
) -> None:
    stack = new_stack(
        botsim_args=("--scenario", str(ROOT / "botsim" / "scenarios" / "pizza.json")),
        worker_env={"BOT_QUIET_MS": "150"},
    )
    result = await call(stack, ["large", "Pepperoni", "confirm"])
    said = result.bot_said()
    assert said[0] == (
        "Welcome to Pizza Phone! What size would you like? "
        "Press 1 for Small, 2 for Medium, or 3 for Large."
    )
    greeting_gather = ET.fromstring(result.webhooks[0].body).find("Gather")
    assert greeting_gather is not None and greeting_gather.get("hints") == "Small,Medium,Large"
    assert said[1] == (
        "A large pizza, great choice. Which topping? "
        "Press 1 for Margherita, 2 for Pepperoni, or 3 for Mushroom."
    )
    assert said[2] == (
        "Your pepperoni pizza. Ready in 20 minutes. Press 1 for Confirm, or "
        "2 for Cancel. Say confirm to order or cancel to start over."
    )
    assert said[3] == "Location: Pick it up here. Thank you, your order is in!"
    assert result.transcript[-1] == ("hangup",)


async def test_streamed_replies_are_assembled(new_stack: Callable[..., Stack]) -> None:
    stack = new_stack(botsim_args=("--stream",), worker_env={"BOT_QUIET_MS": "50"})
    result = await call(stack, ["stream this please", "bye"])
    assert result.bot_said() == [GREETING, "You said: stream this please", "Goodbye!"]


async def test_bot_down_gives_the_spoken_fallback(new_stack: Callable[..., Stack]) -> None:
    stack = new_stack(botsim_args=("--error-rate", "1.0"), worker_env={"BOT_TIMEOUT_MS": "3000"})
    result = await call(stack, ["anyone there?", None, None, None])
    assert result.bot_said()[0] == DEFAULT_FALLBACK
    assert all(w.status in (200, 204) for w in result.webhooks)


async def test_bot_unreachable_gives_the_spoken_fallback(new_stack: Callable[..., Stack]) -> None:
    stack = new_stack(
        chat_url="http://127.0.0.1:9/nothing-listens-here",
        worker_env={"BOT_TIMEOUT_MS": "3000"},
    )
    result = await call(stack, ["hello"])
    assert result.bot_said()[0] == DEFAULT_FALLBACK


async def test_rate_limits_are_retried_within_the_turn(new_stack: Callable[..., Stack]) -> None:
    stack = new_stack(
        botsim_args=("--rate-limit-rate", "0.3", "--seed", "7"),
        worker_env={"BOT_QUIET_MS": "50"},
    )
    result = await call(stack, ["one", "two", "three", "bye"])
    assert result.bot_said() == [
        GREETING,
        "You said: one",
        "You said: two",
        "You said: three",
        "Goodbye!",
    ]


async def test_a_bot_that_never_answers_gives_the_spoken_fallback(
    new_stack: Callable[..., Stack],
) -> None:
    stack = new_stack(
        botsim_args=("--stall-rate", "1.0"),
        edge_env={"REPLY_DEADLINE_MS": "5000"},
        worker_env={"BOT_TIMEOUT_MS": "1500"},
    )
    result = await call(stack, ["hello?"])
    assert result.bot_said()[0] == DEFAULT_FALLBACK


async def test_kept_listen_streams_serve_later_turns_in_order(
    new_stack: Callable[..., Stack],
) -> None:
    # One worker keeps the call's listen stream between turns: every later turn reuses it, and
    # signals left from an earlier turn are never taken for the next turn's reply.
    stack = new_stack(worker_env={"BOT_LISTEN_KEEP_S": "30", "BOT_QUIET_MS": "50"})
    result = await call(stack, ["one", "two", "three", "four", "bye"])
    assert result.bot_said() == [
        GREETING,
        "You said: one",
        "You said: two",
        "You said: three",
        "You said: four",
        "Goodbye!",
    ]
    worker_port = stack.workers[0].env["WORKER_METRICS_PORT"]
    async with Http(f"http://127.0.0.1:{worker_port}") as http:
        text = (await http.get("/metrics")).text
    opened = [
        ln for ln in text.splitlines() if ln.startswith("voicebridge_bot_listen_opened_total")
    ]
    assert opened and float(opened[0].split()[-1]) == 1.0  # one stream for the whole call
