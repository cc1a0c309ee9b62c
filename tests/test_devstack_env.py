"""`make run` (python -m devstack) passes the user's settings on to the processes it starts.

Which variables those are comes from the settings code (shared/settings_vars.py), so a setting
that is added or renamed there reaches the edge and workers with no list to update; the ones
devstack sets itself are named in devstack.stack.SET_BY_DEVSTACK, and checked against what it
really sets.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from devstack.processes import Managed, http_ok, wait_until
from devstack.stack import (
    SET_BY_DEVSTACK,
    Stack,
    StackConfig,
    forwarded_variables,
    stack_from_env,
)
from shared.config import ConfigError
from shared.settings_vars import ROLES, all_variables, env_reads_in, variables_read

# What a user might export before `make run`: settings of the worker only, the edge only, both.
USER_ENV = {
    "OPENING_MODE": "event",
    "BOT_LISTEN_KEEP_S": "5",
    "OPENING_TEXT": "Hi from devstack-env",
    "TROUBLE_PHRASE": "Trouble, said devstack-env.",
    "UNAVAILABLE_PHRASE": "Unavailable, said devstack-env.",
    "LOG_LEVEL": "DEBUG",
    # devstack's own knobs: one worker, the edge on any free port (never 8080 here).
    "DEVSTACK_WORKERS": "1",
    "DEVSTACK_BOTSIM_ARGS": "--stream --seed 7",
    "EDGE_PORT": "0",
    # ... and a variable devstack sets per process: the user's value must not win.
    "WORKER_NAME": "from-the-user",
}


def proc_environ(pid: int) -> dict[str, str]:
    """The environment a running process was started with, as the kernel holds it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


@pytest.fixture()
def user_env(monkeypatch: pytest.MonkeyPatch) -> Mapping[str, str]:
    # The variables must get to the processes through devstack, not through inheriting them
    # from this test's own environment.
    for name in USER_ENV:
        monkeypatch.delenv(name, raising=False)
    return USER_ENV


@pytest.fixture()
def started(user_env: Mapping[str, str]) -> Iterator[Stack]:
    if not Path("/proc/self/environ").exists():
        pytest.skip("reading another process's environment needs Linux /proc")
    config = stack_from_env(user_env)
    assert config.workers == 1 and config.edge_port == 0
    stack = Stack(config)
    try:
        stack.start()
    except Exception:
        print(stack.logs())
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()


def _settings_accepted(worker: Managed) -> None:
    # The worker serves /metrics once its settings have parsed (OPENING_MODE=event among them).
    port = worker.env["WORKER_METRICS_PORT"]
    wait_until(http_ok(f"http://127.0.0.1:{port}/metrics"), 30, worker.name, worker.proc)


def test_variables_set_for_make_run_reach_the_processes(started: Stack) -> None:
    stack = started
    assert stack.edge is not None and len(stack.workers) == 1
    worker = stack.workers[0]
    _settings_accepted(worker)
    edge_env = proc_environ(stack.edge.proc.pid)  # the gunicorn master; its workers fork from it
    worker_env = proc_environ(worker.proc.pid)
    for role, env in (("edge", edge_env), ("worker", worker_env)):
        for name, value in USER_ENV.items():
            if name in forwarded_variables(role):
                assert env.get(name) == value, f"{role}: {name} did not arrive"
    assert worker_env["OPENING_MODE"] == "event"
    assert worker_env["BOT_LISTEN_KEEP_S"] == "5"
    assert edge_env["TROUBLE_PHRASE"] == USER_ENV["TROUBLE_PHRASE"]
    assert edge_env["UNAVAILABLE_PHRASE"] == USER_ENV["UNAVAILABLE_PHRASE"]
    assert edge_env["LOG_LEVEL"] == worker_env["LOG_LEVEL"] == "DEBUG"
    # Each process gets the settings it reads, not the other's.
    assert "OPENING_MODE" not in edge_env and "TROUBLE_PHRASE" not in worker_env
    # What devstack sets per process stays devstack's.
    assert worker_env["WORKER_NAME"] == worker.name != USER_ENV["WORKER_NAME"]
    assert edge_env["EDGE_PORT"] == str(stack.edge_port) != "0"
    assert edge_env["GRPC_TOKEN"] == worker_env["GRPC_TOKEN"] == stack.grpc_token
    assert edge_env["REDIS_URL"] == worker_env["REDIS_URL"] == stack.redis_url
    assert worker_env["BOTPRESS_CHAT_URL"] == stack.chat_url
    # Managed.env records the same thing devstack handed over.
    assert worker.env["OPENING_MODE"] == "event"
    assert stack.edge.env["TROUBLE_PHRASE"] == USER_ENV["TROUBLE_PHRASE"]
    assert stack.edge.alive() and worker.alive()
    # botsim got the user's flags (a streaming bot for the relay demo).
    assert stack.botsim is not None
    cmdline = Path(f"/proc/{stack.botsim.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert [b"--stream", b"--seed", b"7"] == cmdline[-4:-1]


def test_botsim_args_are_split_as_a_shell_would_and_bad_quoting_is_named() -> None:
    config = stack_from_env({"DEVSTACK_BOTSIM_ARGS": "--stream --scenario 'my bots/x.json'"})
    assert config.botsim_args == ("--stream", "--scenario", "my bots/x.json")
    assert stack_from_env({}).botsim_args == ()
    with pytest.raises(ConfigError, match="DEVSTACK_BOTSIM_ARGS"):
        stack_from_env({"DEVSTACK_BOTSIM_ARGS": "--scenario 'unclosed"})


def _set_by_devstack(config: StackConfig) -> dict[str, set[str]]:
    """Per role, the variables devstack's own environment for that process contains."""
    stack = Stack(config)
    try:
        return {
            "edge": set(stack.edge_env()) - set(config.edge_env),
            "worker": set(stack.worker_env("w")) - set(config.worker_env),
        }
    finally:
        shutil.rmtree(stack.launcher.log_dir, ignore_errors=True)


def test_every_setting_is_forwarded_or_set_by_devstack() -> None:
    """A setting added to edge/worker settings can't be dropped silently by `make run`."""
    own = _set_by_devstack(stack_from_env({}))
    own_all = own["edge"] | own["worker"]
    assert SET_BY_DEVSTACK == own_all, "SET_BY_DEVSTACK is stale"
    for role in ROLES:
        read = variables_read(role)
        forwarded = forwarded_variables(role)
        assert forwarded <= read
        # NAME_FILE of a variable devstack sets: NAME wins over the file, so it isn't passed on.
        shadowed = {f"{name}_FILE" for name in own[role]}
        left_out = read - forwarded - own[role] - shadowed
        assert not left_out, f"{role} reads {sorted(left_out)}, which make run never passes on"
        assert not forwarded & own[role]
    # Each forwarded variable really gets through stack_from_env, whatever its value.
    passed_on = set().union(*(forwarded_variables(role) for role in ROLES))
    assert passed_on == {
        n for n in all_variables() - SET_BY_DEVSTACK if n.removesuffix("_FILE") not in own_all
    }
    everything = {name: f"value-of-{name}" for name in passed_on}
    config = stack_from_env(everything)
    for role, given in (("edge", config.edge_env), ("worker", config.worker_env)):
        shadowed = {f"{name}_FILE" for name in own[role]}
        assert given == {n: everything[n] for n in forwarded_variables(role)}, role
        assert set(given) == variables_read(role) - own[role] - shadowed, role


def test_the_user_s_values_of_what_devstack_sets_keep_flowing(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    config = stack_from_env(
        {
            "EDGE_PORT": "9123",
            "PUBLIC_URL": "https://tunnel.example.com/",
            "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
            "TWILIO_AUTH_TOKEN_FILE": str(token_file),
            "REDIS_URL": "redis://10.0.0.9:6380/2",
            "BOTPRESS_WEBHOOK_ID": "wh-1",
        }
    )
    stack = Stack(config)
    try:
        edge, worker = stack.edge_env(), stack.worker_env("w")
    finally:
        shutil.rmtree(stack.launcher.log_dir, ignore_errors=True)
    assert edge["EDGE_PORT"] == "9123"
    assert edge["PUBLIC_URL"] == "https://tunnel.example.com"
    assert edge["TWILIO_ACCOUNT_SID"] == "AC" + "1" * 32
    assert edge["TWILIO_AUTH_TOKEN"] == "from-a-file"
    assert edge["REDIS_URL"] == worker["REDIS_URL"] == "redis://10.0.0.9:6380/2"
    assert worker["BOTPRESS_CHAT_URL"] == "https://chat.botpress.cloud/wh-1"
    assert "TWILIO_AUTH_TOKEN_FILE" not in edge


def test_scanner_reads_any_receiver_and_every_env_method() -> None:
    source = """
settings = dict(
    a=env.int("A_INT", 1, min_value=0),
    b=e.secret("B_SECRET", required=False),
    c=self.env.choice("C_CHOICE", "x", ("x", "y")),
    d=Env(environ).optional_str("D_OPT"),
    e=env.str(name),           # not a literal: invisible
    f=env.raw(f"{name}_FILE"),  # neither
    g=os.environ.get("G_OS"),  # not an Env read
)
"""
    found = {(r.method, r.name) for r in env_reads_in(ast.parse(source), Path("x.py"))}
    assert found == {
        ("int", "A_INT"),
        ("secret", "B_SECRET"),
        ("choice", "C_CHOICE"),
        ("optional_str", "D_OPT"),
    }
    # redis_url(env) is a shared/config.py helper: its REDIS_URL counts for both processes.
    assert all("REDIS_URL" in variables_read(role) for role in ROLES)
    assert {"TWILIO_AUTH_TOKEN_FILE", "GRPC_TOKEN_FILE"} <= variables_read("edge")
