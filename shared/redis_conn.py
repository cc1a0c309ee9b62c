"""Redis clients with timeouts and retries chosen for voicebridge (docs/architecture.md,
"Pitfalls")."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

MAX_CONNECTIONS = 256


def connect(url: str, *, socket_timeout_s: float | None = 2.0, retries: int = 1) -> Redis:
    """A client that fails fast: a webhook must answer within Twilio's 15 s even if Redis hangs.

    redis-py retries commands by default; a retried XADD could duplicate a turn, which is one
    reason turns carry an idempotency mark. Keep blocking reads' BLOCK below socket_timeout_s.
    The pool is a blocking one: under a burst, a command waits (up to the socket timeout) for a
    free connection instead of failing with "Too many connections".
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=socket_timeout_s or 5.0,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=1.0,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
        health_check_interval=15,
    )
    return Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
