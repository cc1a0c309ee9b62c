"""What tests import: whole calls through a stack, polling, and HTTP as tests use it.

Fixtures live in conftest.py; everything a test module imports lives here.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from callsim.call import CallResult, place_call
from callsim.script import ScriptFn, Utterance
from devstack.stack import Stack, StackConfig

DEADLINE_MS = 1000  # the shared stack's reply deadline
SLOW_MS = 2500  # how long botsim takes over a "slow ..." turn on the shared stack


def wait_for(condition: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Poll a condition (never a fixed sleep standing in for one)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def start_stack(config: StackConfig) -> Stack:
    stack = Stack(config)
    try:
        return stack.start()
    except Exception:
        print(stack.logs())
        raise


async def call(stack: Stack, caller: Sequence[Utterance] | ScriptFn, **kwargs: Any) -> CallResult:
    """One whole call to the stack's edge, with its status callback (place_call's kwargs)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        return await place_call(
            client,
            f"{stack.edge_url}/twilio/voice",
            account_sid=stack.config.account_sid,
            auth_token=stack.config.auth_token,
            caller=caller,
            status_url=f"{stack.edge_url}/twilio/status",
            **kwargs,
        )


# -- HTTP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """A response read whole, so a test can assert on it after the connection is released."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive lookups
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return json.loads(self.content)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 3xx is the answer under test


# To the local processes only: no environment proxy, no redirects followed.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def fetch(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Response:
    """One blocking request (for sync tests and threads); an error status is a Response too."""
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
    try:
        with _direct.open(request, timeout=timeout_s) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, err.headers, err.read())


class Http:
    """An aiohttp session for async tests: `base_url` + path, responses read whole.

    URLs go out exactly as written (no re-quoting: a test's `%2F` stays `%2F`), no redirects
    are followed, and nothing comes from the environment (proxies, netrc).
    """

    def __init__(self, base_url: str = "", timeout_s: float = 5.0) -> None:
        self.base_url = base_url
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Http:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Http(...)`"
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        async with self.session.request(
            method,
            self.url(path),
            json=json,
            data=content,
            headers=headers,
            params=params,
            allow_redirects=False,
        ) as resp:
            return Response(resp.status, resp.headers, await resp.read())

    def url(self, path: str) -> URL:
        return URL(self.base_url + path, encoded=True)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Response:
        return await self.request("PUT", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response unread, for a body that arrives over time (server-sent events): no
        limit on the whole, only on each wait for more of it."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout_s, sock_read=self._timeout_s
        )
        async with self.session.request(
            method, self.url(path), headers=headers, timeout=timeout
        ) as resp:
            yield resp
