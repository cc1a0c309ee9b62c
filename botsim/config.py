"""Settings for one botsim process: parsed once, at the entry point, then passed in."""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BotsimConfig:
    host: str = "127.0.0.1"
    port: int = 3100
    # Every bot reply waits latency_ms (+ normal jitter), slow turns wait slow_ms more.
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    slow_ms: float = 3000.0
    # When set, user keys signed with it are accepted (the Chat integration's "personal" mode).
    encryption_key: str | None = field(default=None, repr=False)
    # Signs the keys that POST /users hands out ("shared" mode). Random per process.
    server_secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    # Fault injection, each a probability in [0, 1] applied per request / per bot turn.
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    stall_rate: float = 0.0
    # The real platform sends `data: ping` after 30 s without traffic (Pushpin Grip-Keep-Alive).
    keepalive_s: float = 30.0
    # Stream the default bot's text replies as message_stream_delta signals first.
    stream: bool = False
    scenario_path: str | None = None
    # Seed for the fault/jitter random generator; None = nondeterministic.
    seed: int | None = None
    # Page size of list routes (messages, conversations, participants).
    page_size: int = 20

    def __post_init__(self) -> None:
        for name in ("error_rate", "rate_limit_rate", "stall_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        for name in ("latency_ms", "latency_jitter_ms", "slow_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.keepalive_s <= 0:
            raise ValueError("keepalive_s must be > 0")
        if self.page_size < 1:
            raise ValueError("page_size must be >= 1")

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> BotsimConfig:
        return cls.from_namespace(build_parser().parse_args(argv))

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> BotsimConfig:
        return cls(
            host=ns.host,
            port=ns.port,
            latency_ms=ns.latency_ms,
            latency_jitter_ms=ns.latency_jitter_ms,
            slow_ms=ns.slow_ms,
            encryption_key=ns.encryption_key or os.environ.get("BOTSIM_ENCRYPTION_KEY") or None,
            error_rate=ns.error_rate,
            rate_limit_rate=ns.rate_limit_rate,
            stall_rate=ns.stall_rate,
            keepalive_s=ns.keepalive_s,
            stream=ns.stream,
            scenario_path=ns.scenario,
            seed=ns.seed,
            page_size=ns.page_size,
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m botsim", description="A stand-in for the Botpress Chat API."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3100, help="0 picks a free port (printed)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before every bot reply")
    p.add_argument("--latency-jitter-ms", type=float, default=0.0, help="stddev of that delay")
    p.add_argument("--slow-ms", type=float, default=3000.0, help="extra delay for 'slow...' turns")
    p.add_argument("--encryption-key", default=None, help="accept user keys signed with it")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests -> 500")
    p.add_argument("--rate-limit-rate", type=float, default=0.0, help="share of requests -> 429")
    p.add_argument("--stall-rate", type=float, default=0.0, help="share of turns never answered")
    p.add_argument("--keepalive-s", type=float, default=30.0, help="SSE `data: ping` interval")
    p.add_argument("--stream", action="store_true", help="stream bot replies (delta signals)")
    p.add_argument("--scenario", default=None, help="scenario file (.json or .yaml)")
    p.add_argument("--seed", type=int, default=None, help="seed for faults and jitter")
    p.add_argument("--page-size", type=int, default=20, help="items per list page")
    return p
