"""Several workers on one machine with default settings: unique names, no port clash, all
serve; WORKER_PROCESSES=N runs N of them from one command with one metrics endpoint."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import Callable

import redis

from devstack.processes import Managed, free_port
from devstack.stack import Stack
from shared import keys
from tests.helpers import call, fetch, wait_for

STOPPED = re.compile(r"worker (\S+) stopped after (\d+) turns")


def bare_worker_env(stack: Stack, **extra: str) -> dict[str, str]:
    """What a user sets to run a worker by hand: where Redis and the bot are, nothing else."""
    return {
        "REDIS_URL": stack.redis_url,
        "BOTPRESS_CHAT_URL": stack.chat_url,
        "GRPC_TOKEN": stack.grpc_token,
        **extra,
    }


def consumers(client: redis.Redis) -> set[str]:
    found = client.xinfo_consumers(keys.TURN_STREAM, keys.WORKER_GROUP)
    return {c["name"].decode() for c in found}


def alive_names(client: redis.Redis) -> set[str]:
    return {k.decode().split(":")[2] for k in client.scan_iter(match=keys.worker_alive("*"))}


async def some_calls(stack: Stack, n: int) -> None:
    results = await asyncio.gather(*(call(stack, [f"hello {i}", "bye"]) for i in range(n)))
    assert all(
        r.error is None and any("You said: hello" in s for s in r.bot_said()) for r in results
    ), [r.transcript for r in results]


def stop_and_count(worker: Managed) -> dict[str, int]:
    assert worker.stop(signal.SIGTERM) == 0, worker.log_tail()
    return {m.group(1): int(m.group(2)) for m in STOPPED.finditer(worker.log_tail(400))}


async def test_two_default_workers_on_one_machine_both_serve(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack = new_stack(workers=0)
    client = redis_for(stack)
    host = socket.gethostname()
    first = stack.launcher.python_module("bare-worker-a", "worker", bare_worker_env(stack))
    wait_for(lambda: alive_names(client) == {f"{host}-0"})
    second = stack.launcher.python_module("bare-worker-b", "worker", bare_worker_env(stack))
    wait_for(lambda: alive_names(client) == {f"{host}-0", f"{host}-1"})
    await some_calls(stack, 12)
    assert first.alive() and second.alive(), second.log_tail()
    assert "Traceback" not in first.log_tail(400) + second.log_tail(400)
    wait_for(lambda: consumers(client) >= {f"{host}-0", f"{host}-1"})
    served = {**stop_and_count(first), **stop_and_count(second)}
    assert set(served) == {f"{host}-0", f"{host}-1"}
    assert all(n > 0 for n in served.values()), served
    # A clean stop frees the name at once.
    assert alive_names(client) == set()


async def test_an_operator_chosen_metrics_port_that_is_taken_is_one_clear_line(
    new_stack: Callable[..., Stack],
) -> None:
    stack = new_stack(workers=0)
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        worker = stack.launcher.python_module(
            "port-taken", "worker", bare_worker_env(stack, WORKER_METRICS_PORT=str(port))
        )
        code = worker.proc.wait(30)
    out = worker.log_tail(50)
    assert code == 2, out
    assert f"WORKER_METRICS_PORT={port} is already in use" in out
    assert "Traceback" not in out


async def test_worker_processes_runs_n_workers_with_one_metrics_endpoint(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack = new_stack(workers=0)
    client = redis_for(stack)
    port = free_port()
    supervisor = stack.launcher.python_module(
        "worker-processes",
        "worker",
        bare_worker_env(
            stack, WORKER_PROCESSES="2", WORKER_NAME="box", WORKER_METRICS_PORT=str(port)
        ),
    )
    wait_for(lambda: alive_names(client) == {"box-0", "box-1"})
    await some_calls(stack, 12)
    metrics = fetch(f"http://127.0.0.1:{port}/metrics").text
    finished = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("voicebridge_worker_turns_total{")
    )
    # 12 calls: a greeting, two spoken turns and a call end each, all counted in one place.
    assert finished >= 12 * 3, metrics
    served = stop_and_count(supervisor)
    assert set(served) == {"box-0", "box-1"}, supervisor.log_tail()
    assert all(n > 0 for n in served.values()), served
