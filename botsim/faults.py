"""Request-level faults: random 500s and 429s, as a Falcon middleware.

`/hello` is spared so that clients can still connect (the official client calls it once, first)
and faults show up on the calls that matter; so is botsim's own `/_botsim/` introspection.
"""

from __future__ import annotations

import random

import falcon.asgi

from .errors import InternalError, RateLimitedError


class FaultMiddleware:
    def __init__(self, error_rate: float, rate_limit_rate: float, rng: random.Random) -> None:
        self._error_rate = error_rate
        self._rate_limit_rate = rate_limit_rate
        self._rng = rng

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        path = req.path
        if path.endswith("/hello") or path.endswith("/hello/") or "/_botsim/" in path:
            return
        if self._rate_limit_rate and self._rng.random() < self._rate_limit_rate:
            raise RateLimitedError("Too many requests, please slow down")
        if self._error_rate and self._rng.random() < self._error_rate:
            raise InternalError("An internal error occurred (injected by botsim)")
