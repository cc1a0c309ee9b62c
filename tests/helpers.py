"""What tests import: whole calls through a stack, polling, and HTTP as tests use it.

Fixtures live in conftest.py; everything a test module imports lives here.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from twilio.request_validator import RequestValidator
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


# -- a tiny Twilio-facing app ---------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str  # with query
    params: dict[str, str]
    signature_ok: bool


Responder = Callable[[Seen], "tuple[int, str] | str"]


@dataclass
class TwimlApp:
    """Routes by path (no query) to a responder; records every request it saw, and whether
    twilio-python's own RequestValidator accepts its signature (for `token`, against
    `public_url` + path when set: what Twilio signed behind a proxy, else the URL reached)."""

    token: str
    public_url: str | None = None
    routes: dict[str, Responder] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _twiml_handler(app: TwimlApp) -> type[BaseHTTPRequestHandler]:
    validator = RequestValidator(app.token)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            params = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
            # What Twilio signed: the public URL, never the Host we were reached at.
            public = (app.public_url or app.url) + self.path
            sig = self.headers.get("X-Twilio-Signature", "")
            seen = Seen(self.command, self.path, params, validator.validate(public, params, sig))
            if self.command == "GET":
                seen.params = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            app.seen.append(seen)
            route = app.routes.get(urlsplit(self.path).path)
            answer = route(seen) if route else (404, "not found")
            status, text = answer if isinstance(answer, tuple) else (200, answer)
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

    return Handler


def twiml(*verbs: str) -> str:
    """A TwiML document of these verbs."""
    return '<?xml version="1.0" encoding="UTF-8"?><Response>' + "".join(verbs) + "</Response>"


@contextmanager
def serve_twiml_app(app: TwimlApp) -> Iterator[TwimlApp]:
    """`app` served on a free port in a thread, until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _twiml_handler(app))
    server.daemon_threads = True
    app.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield app
    finally:
        app.release.set()
        server.shutdown()
        server.server_close()
        thread.join()
