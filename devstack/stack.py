"""The whole local stack as one object: Redis, botsim, edge (gunicorn), workers."""

from __future__ import annotations

import os
import re
import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from devstack.processes import (
    Launcher,
    Managed,
    StartupError,
    free_port,
    http_ok,
    port_free,
    wait_until,
)
from shared.config import ConfigError, Env
from shared.settings_vars import variables_read

DEMO_ACCOUNT_SID = "AC" + "0" * 31 + "1"
DEMO_AUTH_TOKEN = "devstack-auth-token"
DEMO_API_TOKEN = "devstack-api-token"  # `make run`'s POST /v1/calls bearer token
#: `make run`'s Twilio number: the stand-in owns it (another `from` is Twilio's 21210, our
#: 502) and it is the edge's OUTBOUND_FROM unless the environment sets one.
DEMO_FROM = "+14155550199"


@dataclass
class StackConfig:
    edge_port: int = 0  # 0: any free port
    edge_workers: int = 1
    workers: int = 2
    redis_url: str | None = None  # None: start a private redis-server
    botsim_args: tuple[str, ...] = ()
    chat_url: str | None = None  # a real Botpress Chat API base; None: start botsim
    public_url: str | None = None  # None: http://127.0.0.1:{edge_port}
    account_sid: str = DEMO_ACCOUNT_SID
    auth_token: str = DEMO_AUTH_TOKEN
    # callsim's Twilio REST stand-in (callsim twilio-api): the edge places outbound calls there
    # (TWILIO_API_BASE_URL) and the stand-in plays the people and machines they reach.
    twilio_api: bool = False
    twilio_api_port: int = 0  # 0, or taken: any free port
    twilio_api_args: tuple[str, ...] = ()
    api_token: str | None = None  # the edge's API_TOKEN; None: not set (no outbound API)
    extra_env: dict[str, str] = field(default_factory=dict)  # edge and workers
    edge_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    to_terminal: bool = False


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.launcher = Launcher(to_terminal=config.to_terminal)
        self.redis: Managed | None = None
        self.botsim: Managed | None = None
        self.twilio_api: Managed | None = None
        self.twilio_api_url = ""
        self.edge: Managed | None = None
        self.workers: list[Managed] = []
        self.redis_url = config.redis_url or ""
        self.chat_url = (config.chat_url or "").rstrip("/")
        self.edge_port = config.edge_port or free_port()
        self.edge_url = f"http://127.0.0.1:{self.edge_port}"
        self.public_url = (config.public_url or self.edge_url).rstrip("/")
        self.grpc_token = secrets.token_hex(16)
        self._worker_seq = 0

    # -- the pieces ---------------------------------------------------------------------------
    def common_env(self) -> dict[str, str]:
        return {"REDIS_URL": self.redis_url, "GRPC_TOKEN": self.grpc_token, **self.config.extra_env}

    def edge_env(self) -> dict[str, str]:
        outbound = {"API_TOKEN": self.config.api_token} if self.config.api_token else {}
        if self.twilio_api_url:
            outbound["TWILIO_API_BASE_URL"] = self.twilio_api_url
        return {
            **self.common_env(),
            **outbound,
            "PUBLIC_URL": self.public_url,
            "TWILIO_ACCOUNT_SID": self.config.account_sid,
            "TWILIO_AUTH_TOKEN": self.config.auth_token,
            "EDGE_HOST": "127.0.0.1",
            "EDGE_PORT": str(self.edge_port),
            "EDGE_WORKERS": str(self.config.edge_workers),
            "GRPC_BIND_HOST": "127.0.0.1",
            **self.config.edge_env,
        }

    def worker_env(self, name: str) -> dict[str, str]:
        # botsim serves any webhook id as a bot of its own: ROUTES_FILE's botpress_webhook_id
        # entries reach botsim's bots, as they would reach Botpress's in production.
        api = {"BOTPRESS_API_URL": self.chat_url.rsplit("/", 1)[0]} if self.botsim else {}
        return {
            **self.common_env(),
            **api,
            "BOTPRESS_CHAT_URL": self.chat_url,
            "WORKER_NAME": name,
            "WORKER_METRICS_PORT": str(free_port()),
            **self.config.worker_env,
        }

    def start_redis(self) -> None:
        if not self.redis_url:
            self.redis, self.redis_url = self.launcher.redis()

    def restart_redis(self, down: Callable[[], None] | None = None) -> None:
        """Stop our redis-server, run `down` while it is stopped, start it again on the same
        port with the same data (AOF)."""
        assert self.redis is not None, "the stack uses an external Redis"
        argv = [str(a) for a in cast(list[str], self.redis.proc.args)]
        port = int(argv[argv.index("--port") + 1])
        data_dir = argv[argv.index("--dir") + 1]
        self.redis.stop()
        if down is not None:
            down()
        self.redis, self.redis_url = self.launcher.redis(port, data_dir)

    def start_botsim(self) -> None:
        self.botsim = self.launcher.python_module(
            "botsim", "botsim", {}, "--host", "127.0.0.1", "--port", "0", *self.config.botsim_args
        )
        pattern = re.compile(r"botsim listening on (http://\S+)")

        def listening() -> bool:
            assert self.botsim is not None
            match = pattern.search(self.botsim.log_tail(200)) if self.botsim.log_path else None
            if match:
                # botsim serves any webhook id; ours names the stack in botsim's logs.
                self.chat_url = match.group(1).replace("<any-webhook-id>", "devstack").rstrip("/")
            return bool(match)

        if self.config.to_terminal:
            raise StartupError("to_terminal needs an explicit BOTPRESS_CHAT_URL")
        wait_until(listening, 30, "botsim", self.botsim.proc)
        wait_until(http_ok(f"{self.chat_url}/hello"), 30, "botsim /hello", self.botsim.proc)

    def start_twilio_api(self) -> None:
        port = self.config.twilio_api_port
        if port and not port_free(port):
            port = 0  # another stack has it: the printed URL says where this one is
        self.twilio_api = self.launcher.python_module(
            "twilio-api",
            "callsim",
            {},
            "twilio-api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--account-sid",
            self.config.account_sid,
            "--auth-token",
            self.config.auth_token,
            *self.config.twilio_api_args,
        )
        pattern = re.compile(r"callsim twilio-api listening on (http://\S+)")

        def listening() -> bool:
            assert self.twilio_api is not None
            match = pattern.search(self.twilio_api.log_tail(200))
            if match:
                self.twilio_api_url = match.group(1)
            return bool(match)

        wait_until(listening, 30, "callsim twilio-api", self.twilio_api.proc)
        calls = f"{self.twilio_api_url}/_callsim/calls"
        wait_until(http_ok(calls), 30, "callsim twilio-api", self.twilio_api.proc)

    def start_edge(self) -> None:
        self.edge = self.launcher.python_module("edge", "edge", self.edge_env())
        wait_until(http_ok(f"{self.edge_url}/readyz"), 60, "edge /readyz", self.edge.proc)

    def start_worker(self) -> Managed:
        name = f"devstack-worker-{self._worker_seq}"
        self._worker_seq += 1
        worker = self.launcher.python_module(name, "worker", self.worker_env(name))
        self.workers.append(worker)
        return worker

    # -- whole stack ----------------------------------------------------------------------------
    def start(self) -> Stack:
        try:
            self.start_redis()
            if not self.chat_url:
                self.start_botsim()
            if self.config.twilio_api:
                self.start_twilio_api()
            for _ in range(self.config.workers):
                self.start_worker()
            self.start_edge()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # The Twilio stand-in first (no new calls, and its idle keep-alive connections would
        # hold up the edge's graceful stop), then the edge (stops taking calls), then workers
        # (finish in-flight turns), then the rest.
        for managed in [self.twilio_api, self.edge, *self.workers, self.botsim, self.redis]:
            if managed is not None:
                managed.stop()

    def logs(self) -> str:
        parts = []
        for managed in [self.edge, *self.workers, self.twilio_api, self.botsim, self.redis]:
            if managed is not None:
                parts.append(f"--- {managed.name} ---\n{managed.log_tail()}")
        return "\n".join(parts)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# What devstack sets for each process itself (Redis and the bot it started or was pointed at,
# ports, names, the token edge and workers share, the Twilio account callsim signs with). The
# user's values of those it honours are read in stack_from_env; a NAME_FILE of these is not
# passed on either (NAME would win over it anyway).
SET_BY_DEVSTACK = frozenset(
    {
        "REDIS_URL",
        "GRPC_TOKEN",
        "PUBLIC_URL",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "API_TOKEN",
        "EDGE_HOST",
        "EDGE_PORT",
        "EDGE_WORKERS",
        "GRPC_BIND_HOST",
        "BOTPRESS_CHAT_URL",
        "WORKER_NAME",
        "WORKER_METRICS_PORT",
    }
)


def forwarded_variables(role: str) -> frozenset[str]:
    """The variables `role` ("edge" or "worker") reads, as its settings code reads them
    (shared/settings_vars.py), that `make run` passes on from the user's environment: all but
    those devstack sets itself."""
    return frozenset(
        name
        for name in variables_read(role)
        if name not in SET_BY_DEVSTACK and name.removesuffix("_FILE") not in SET_BY_DEVSTACK
    )


def stack_from_env(environ: Mapping[str, str] | None = None) -> StackConfig:
    """The stack `python -m devstack` runs, configured from `environ` (default os.environ)."""
    source = os.environ if environ is None else environ
    env = Env(source)
    webhook_id = env.optional_str("BOTPRESS_WEBHOOK_ID")
    return StackConfig(
        edge_port=env.int("EDGE_PORT", 8080, min_value=0, max_value=65535),
        redis_url=env.optional_str("REDIS_URL"),
        public_url=env.optional_str("PUBLIC_URL"),
        account_sid=env.str("TWILIO_ACCOUNT_SID", DEMO_ACCOUNT_SID),
        auth_token=env.secret("TWILIO_AUTH_TOKEN", required=False).value or DEMO_AUTH_TOKEN,
        # Outbound calls go to callsim's stand-in unless the user points the edge elsewhere
        # (TWILIO_API_BASE_URL, e.g. Twilio's own: it is then passed on like any setting).
        twilio_api=not env.optional_str("TWILIO_API_BASE_URL"),
        twilio_api_port=env.int("DEVSTACK_TWILIO_API_PORT", 8081, min_value=0, max_value=65535),
        twilio_api_args=("--owned-number", env.str("OUTBOUND_FROM", DEMO_FROM)),
        api_token=env.secret("API_TOKEN", required=False).value or DEMO_API_TOKEN,
        workers=env.int("DEVSTACK_WORKERS", 2, min_value=0),
        botsim_args=_botsim_args(env.str("DEVSTACK_BOTSIM_ARGS", "")),
        chat_url=env.optional_str("BOTPRESS_CHAT_URL")
        or (f"https://chat.botpress.cloud/{webhook_id}" if webhook_id else None),
        edge_env={"OUTBOUND_FROM": DEMO_FROM, **_forwarded(source, "edge")},
        worker_env=_forwarded(source, "worker"),
    )


def _botsim_args(value: str) -> tuple[str, ...]:
    """DEVSTACK_BOTSIM_ARGS: botsim's own flags, as a shell would split them (`--stream`)."""
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise ConfigError(f"DEVSTACK_BOTSIM_ARGS: {exc} in {value!r}") from None


def _forwarded(environ: Mapping[str, str], role: str) -> dict[str, str]:
    names = forwarded_variables(role)
    return {name: value for name, value in environ.items() if name in names}
