"""Fixtures that start real parts: redis-server on a free port, botsim, the edge under
gunicorn, workers. Nothing here is mocked; a missing redis-server fails loudly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
import redis

from callsim.call import CallResult, place_call
from callsim.script import ScriptFn, Utterance
from devstack.stack import Stack, StackConfig

DEADLINE_MS = 1000
SLOW_MS = 2500


def wait_for(condition: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Poll a condition (never a fixed sleep standing in for one)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def start_stack(config: StackConfig) -> Stack:
    stack = Stack(config)
    try:
        return stack.start()
    except Exception:
        print(stack.logs())
        raise


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The shared stack: two workers, a 1 s reply deadline, botsim's 'slow' turns take 2.5 s."""
    s = start_stack(
        StackConfig(
            workers=2,
            botsim_args=("--slow-ms", str(SLOW_MS)),
            edge_env={"REPLY_DEADLINE_MS": str(DEADLINE_MS), "MAX_SILENT_TURNS": "3"},
            worker_env={"BOT_QUIET_MS": "100"},
        )
    )
    yield s
    s.stop()


@pytest.fixture()
def new_stack() -> Iterator[Callable[..., Stack]]:
    """Starts a stack of its own for one test (StackConfig fields; one worker unless told)."""
    started: list[Stack] = []

    def start(**kwargs: Any) -> Stack:
        kwargs.setdefault("workers", 1)
        stack = start_stack(StackConfig(**kwargs))
        started.append(stack)
        return stack

    yield start
    for stack in started:
        stack.stop()


@pytest.fixture()
def rdb(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


def call(stack: Stack, caller: Sequence[Utterance] | ScriptFn, **kwargs: object) -> CallResult:
    async def go() -> CallResult:
        async with httpx.AsyncClient(timeout=20) as client:
            return await place_call(
                client,
                f"{stack.edge_url}/twilio/voice",
                account_sid=stack.config.account_sid,
                auth_token=stack.config.auth_token,
                caller=caller,
                status_url=f"{stack.edge_url}/twilio/status",
                **kwargs,
            )  # type: ignore[arg-type]

    return asyncio.run(go())
