"""WorkerSettings: the worker process's whole configuration, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.config import ConfigError, Env, Secret, redis_url
from shared.routes import DEFAULT_ROUTE, load_routes

PUBLIC_CHAT_API = "https://chat.botpress.cloud"
DEFAULT_FALLBACK = "Sorry, I can't reach the assistant right now. Please try again in a moment."
DEFAULT_METRICS_PORT = 9091
MS_PER_S = 1000
MAX_QUIET_MS = 10000


def _quiet_window_s(env: Env) -> float | None:
    """BOT_QUIET_MS: `auto` (learned) or a fixed number of milliseconds."""
    value = env.str("BOT_QUIET_MS", "auto").lower()
    if value == "auto":
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_QUIET_MS:
        raise ConfigError(
            f"BOT_QUIET_MS must be 'auto' or whole milliseconds up to {MAX_QUIET_MS}, got {value!r}"
        )
    return int(value) / MS_PER_S


@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str
    chat_url: str
    encryption_key: Secret
    name: str | None  # None: the lowest free {hostname}-{i} (worker/heartbeat.py)
    processes: int
    concurrency: int
    read_batch: int
    read_ahead: int  # turns per slot read into the backlog when all slots are busy; 0 off
    bot_quiet_s: float | None  # None: auto, learned per bot (worker/end_of_turn.py)
    bot_timeout_s: float
    fallback_phrase: str
    opening_text: str
    opening_mode: str
    listen_keep_s: float
    grpc_token: Secret
    deliver_timeout_s: float
    visibility_timeout_ms: int  # Redis takes idle times in ms
    max_deliveries: int
    shutdown_grace_s: float
    metrics_port: int  # 0: no metrics endpoint
    metrics_port_set: bool  # False: the default port; another worker may hold it (then any)
    log_level: str
    # ROUTES_FILE ("" = none) and its routes' settings (shared/routes.py), each these settings
    # with the route's values laid over; empty without a file: by_route() is {"default": self}.
    routes_file: str = ""
    routes: Mapping[str, WorkerSettings] = field(default_factory=dict)

    def by_route(self) -> Mapping[str, WorkerSettings]:
        """Route name -> the settings its turns are answered with (its bot)."""
        return self.routes or {DEFAULT_ROUTE: self}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = Env(environ)
        routes_file = env.str("ROUTES_FILE", "")
        # Where BOTPRESS_WEBHOOK_ID's bots live (botsim's base in `make run`).
        api_url = env.url("BOTPRESS_API_URL", PUBLIC_CHAT_API).rstrip("/")
        chat_url = env.optional_str("BOTPRESS_CHAT_URL")
        if chat_url is None:
            webhook_id = env.optional_str("BOTPRESS_WEBHOOK_ID")
            if webhook_id is None and not routes_file:
                raise ConfigError("set BOTPRESS_WEBHOOK_ID (or BOTPRESS_CHAT_URL for botsim)")
            # With ROUTES_FILE the environment may name no bot: its routes name theirs.
            chat_url = f"{api_url}/{webhook_id}" if webhook_id else ""
        else:
            chat_url = env.url("BOTPRESS_CHAT_URL")
        return cls(
            redis_url=redis_url(env),
            chat_url=chat_url.rstrip("/"),
            encryption_key=env.secret("BOTPRESS_ENCRYPTION_KEY", required=False),
            # Stable where set (a pod name); unset, a free slot of this host.
            name=env.optional_str("WORKER_NAME"),
            processes=env.int("WORKER_PROCESSES", 1, min_value=1, max_value=64),
            concurrency=env.int("WORKER_CONCURRENCY", 256, min_value=1, max_value=10000),
            read_batch=env.int("WORKER_READ_BATCH", 64, min_value=1, max_value=1000),
            read_ahead=env.int("WORKER_READ_AHEAD", 16, min_value=0, max_value=64),
            bot_quiet_s=_quiet_window_s(env),
            bot_timeout_s=env.int("BOT_TIMEOUT_MS", 20000, min_value=100, max_value=120000)
            / MS_PER_S,
            fallback_phrase=env.str("FALLBACK_PHRASE", DEFAULT_FALLBACK),
            opening_text=env.str("OPENING_TEXT", "Hello"),
            listen_keep_s=env.float("BOT_LISTEN_KEEP_S", 0.0, min_value=0.0, max_value=3600.0),
            opening_mode=env.choice("OPENING_MODE", "message", ("message", "event")),
            grpc_token=env.secret("GRPC_TOKEN", required=False),
            deliver_timeout_s=env.int("DELIVER_TIMEOUT_MS", 2000, min_value=50) / MS_PER_S,
            visibility_timeout_ms=env.int("VISIBILITY_TIMEOUT_MS", 30000, min_value=1000),
            max_deliveries=env.int("MAX_DELIVERIES", 5, min_value=1),
            shutdown_grace_s=env.float("SHUTDOWN_GRACE_S", 20.0, min_value=0.0),
            metrics_port=env.int(
                "WORKER_METRICS_PORT", DEFAULT_METRICS_PORT, min_value=0, max_value=65535
            ),
            metrics_port_set=env.raw("WORKER_METRICS_PORT") is not None,
            log_level=env.str("LOG_LEVEL", "INFO"),
            routes_file=routes_file,
            # Each route through this very parser: one validator for the file and the env.
            routes=load_routes(routes_file).build(cls.from_env, environ) if routes_file else {},
        )
