"""The callers' HTTP transport: one connection per webhook, connect failures retried briefly.

With one edge process, its restart leaves the port closed for a moment. In production several
edges sit behind a load balancer that sends the call's next webhook to another one; here a
refused connection is retried for up to CONNECT_RETRY_S, inside Twilio's 15 s budget (the time
counts in the webhook's latency, and the retries are counted in the report). Only failures to
connect are retried: a request the edge accepted and then dropped is an error, as for Twilio.
"""

from __future__ import annotations

import asyncio
import time

import httpx

CONNECT_RETRY_S = 10.0
RETRY_PAUSE_S = 0.05


class ReconnectingTransport(httpx.AsyncBaseTransport):
    def __init__(self, retry_s: float = CONNECT_RETRY_S) -> None:
        # No keep-alive: a pooled connection the edge closes at shutdown would fail a request
        # that Twilio, opening a fresh connection, would not.
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        )
        self._retry_s = retry_s
        self.connect_retries = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        give_up = time.monotonic() + self._retry_s
        while True:
            try:
                return await self._inner.handle_async_request(request)
            except httpx.ConnectError:
                if time.monotonic() >= give_up:
                    raise
                self.connect_retries += 1
                await asyncio.sleep(RETRY_PAUSE_S)

    async def aclose(self) -> None:
        await self._inner.aclose()
