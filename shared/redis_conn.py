"""Redis clients with timeouts and retries chosen for voicebridge (see design.md §8)."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff


def connect(url: str, *, socket_timeout_s: float | None = 2.0, retries: int = 1) -> Redis:
    """A client that fails fast: a webhook must answer within Twilio's 15 s even if Redis hangs.

    redis-py retries commands by default; a retried XADD could duplicate a turn, which is one
    reason turns carry an idempotency mark. Keep blocking reads' BLOCK below socket_timeout_s.
    """
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=1.0,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
        health_check_interval=15,
        max_connections=512,
    )
