"""The whole local stack as one object: Redis, botsim, edge (gunicorn), workers."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from devstack.processes import Launcher, Managed, StartupError, free_port, http_ok, wait_until
from shared.config import Env
from shared.settings_vars import variables_read

DEMO_ACCOUNT_SID = "AC" + "0" * 31 + "1"
DEMO_AUTH_TOKEN = "devstack-auth-token"


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
        return {
            **self.common_env(),
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
        return {
            **self.common_env(),
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
            for _ in range(self.config.workers):
                self.start_worker()
            self.start_edge()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Edge first (stops taking calls), then workers (finish in-flight turns), then the rest.
        for managed in [self.edge, *self.workers, self.botsim, self.redis]:
            if managed is not None:
                managed.stop()

    def logs(self) -> str:
        parts = []
        for managed in [self.edge, *self.workers, self.botsim, self.redis]:
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
        workers=env.int("DEVSTACK_WORKERS", 2, min_value=0),
        chat_url=env.optional_str("BOTPRESS_CHAT_URL")
        or (f"https://chat.botpress.cloud/{webhook_id}" if webhook_id else None),
        edge_env=_forwarded(source, "edge"),
        worker_env=_forwarded(source, "worker"),
    )


def _forwarded(environ: Mapping[str, str], role: str) -> dict[str, str]:
    names = forwarded_variables(role)
    return {name: value for name, value in environ.items() if name in names}
