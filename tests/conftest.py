"""Fixtures that start real parts: redis-server on a free port, botsim, the edge under
gunicorn, workers. Nothing here is mocked; a missing redis-server fails loudly.

Only fixtures here: what tests import (call, wait_for, start_stack, ...) is in tests/helpers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from devstack.stack import Stack, StackConfig
from tests.helpers import DEADLINE_MS, SLOW_MS, start_stack


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
    """A client of the shared stack's Redis."""
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


@pytest.fixture()
def redis_for() -> Iterator[Callable[[Stack], redis.Redis]]:
    """Opens a client of any stack's Redis (e.g. one from new_stack); all closed afterwards."""
    opened: list[redis.Redis] = []

    def open_client(stack: Stack) -> redis.Redis:
        client = redis.Redis.from_url(stack.redis_url)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()
