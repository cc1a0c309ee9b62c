"""A dead worker's turns are taken over by its heartbeat's absence, not after the visibility
timeout; a Redis that comes back empty costs each call a moment, not its next turns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import cast

import redis

from devstack.stack import Stack
from shared import keys
from tests.helpers import call, wait_for


def restart_redis_empty(stack: Stack) -> None:
    """Our redis-server stopped and started again on its port with no data (no persistence)."""
    assert stack.redis is not None
    argv = [str(a) for a in cast(list[str], stack.redis.proc.args)]
    port = int(argv[argv.index("--port") + 1])
    stack.redis.stop()
    stack.redis, _ = stack.launcher.redis(port)  # a fresh data directory: nothing comes back


def worker_logs(stack: Stack) -> str:
    return "".join(w.log_tail(2000) for w in stack.workers)


async def test_a_killed_workers_turn_is_taken_over_without_waiting_for_the_visibility_timeout(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    # The idle rule alone would need 120 s: only the missing heartbeat can explain a takeover.
    stack = new_stack(
        workers=2,
        botsim_args=("--slow-ms", "1500"),
        edge_env={"REPLY_DEADLINE_MS": "8000"},
        worker_env={"VISIBILITY_TIMEOUT_MS": "120000", "BOT_QUIET_MS": "50"},
    )
    rdb = redis_for(stack)
    sid = "CA" + "6" * 32
    killed: list[str] = []

    def holder() -> str | None:
        pending = rdb.xpending(keys.TURN_STREAM, keys.WORKER_GROUP)
        names = [c["name"].decode() for c in pending["consumers"] if int(c["pending"])]
        return names[0] if names else None

    def kill_the_holder() -> None:
        wait_for(lambda: holder() is not None)
        name = holder()
        worker = next(w for w in stack.workers if w.env.get("WORKER_NAME") == name)
        worker.kill()  # SIGKILL mid-turn: no chance to finish or ack
        killed.append(name or "")

    killer = threading.Thread(target=kill_the_holder)
    heard_all: list[str] = []

    def caller(heard: Sequence[str]) -> str | None:
        heard_all.extend(heard)
        if not killer.ident:
            killer.start()
            return "slow hello"
        if "You said: slow hello" in " ".join(heard_all):
            return "bye"
        # Held (the hold phrase): stay silent until the taken-over turn's reply is kept.
        wait_for(lambda: rdb.exists(keys.late_replies(sid)) == 1, timeout_s=60)
        return None

    result = await call(stack, caller, call_sid=sid)
    killer.join(5)
    assert killed, "no worker held the turn"
    said = " ".join(result.bot_said())
    assert said.count("You said: slow hello") == 1, result.transcript
    assert f"of worker {killed[0]} (no heartbeat)" in worker_logs(stack)
    assert result.transcript[-1] == ("hangup",)


async def test_a_redis_restarted_empty_mid_call_costs_the_call_nothing_but_a_moment(
    new_stack: Callable[..., Stack],
) -> None:
    stack = new_stack(workers=1, worker_env={"BOT_QUIET_MS": "50"})
    restarted_at: list[float] = []

    def caller(heard: Sequence[str]) -> str | None:
        said = " ".join(heard)
        if "You said: after the restart" in said:
            return "bye"
        if "You said: before the restart" in said:
            restart_redis_empty(stack)
            restarted_at.append(time.monotonic())
            return "after the restart"
        if not restarted_at:
            return "before the restart"
        # The trouble phrase (Redis still coming back): the caller says it again.
        return "after the restart"

    result = await call(stack, caller)
    said = " ".join(result.bot_said())
    assert restarted_at, result.transcript
    assert "You said: after the restart" in said, result.transcript
    assert result.transcript[-1] == ("hangup",)
    logs = worker_logs(stack)
    assert "previous turn never finished" not in logs
    assert "bot did not answer in time" not in logs
