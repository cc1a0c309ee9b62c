"""The callers' HTTP session: one connection per webhook, connect failures retried briefly.

With one edge process, its restart leaves the port closed for a moment. In production several
edges sit behind a load balancer that sends the call's next webhook to another one; here a
refused connection is retried for up to CONNECT_RETRY_S, inside Twilio's 15 s budget (the time
counts in the webhook's latency, and the retries are counted in the report). Only failures to
connect are retried: a request the edge accepted and then dropped is an error, as for Twilio.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from callsim.call import ON_THE_WIRE

CONNECT_RETRY_S = 10.0
RETRY_PAUSE_S = 0.05
MAX_CONNECTIONS = 1000


class ConnectRetry:
    """An aiohttp client middleware: retries a request whose connection could not be opened.

    The request's own timeout still bounds the whole, retries included.
    """

    def __init__(self, retry_s: float = CONNECT_RETRY_S) -> None:
        self._retry_s = retry_s
        self.connect_retries = 0

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        give_up = time.monotonic() + self._retry_s
        while True:
            try:
                return await handler(request)
            except aiohttp.ClientConnectorError:  # nothing was sent: safe to try again
                if time.monotonic() >= give_up:
                    raise
                self.connect_retries += 1
                await asyncio.sleep(RETRY_PAUSE_S)

    def session(self, timeout_s: float) -> aiohttp.ClientSession:
        # No keep-alive (force_close): a pooled connection the edge closes at shutdown would
        # fail a request that Twilio, opening a fresh connection, would not.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, force_close=True),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            middlewares=(self,),
            # A retried webhook's timer starts once its first attempt is on the wire, not while
            # that attempt's connection is still being retried here (callsim.call.ON_THE_WIRE).
            trace_configs=[ON_THE_WIRE],
        )
