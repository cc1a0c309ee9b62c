"""The Botpress Chat API client (base https://chat.botpress.cloud/{webhookId}, or botsim).

The one place Botpress errors are translated: any failure leaves here as BotpressError, carrying
the API's error JSON ({id, code, type, message}) when there was one. 429 and 5xx are retried with
backoff inside the caller's deadline by the one retry rule (`BotpressClient.call_with_retry`);
a 2xx body that carries an error is an error too. The listen stream's signals are parsed here too
(`parse_signal`), so a turn sees bot messages and stream progress, never raw SSE.

aiohttp, not httpx: on this hot path it costs a third of httpx's time per request, and its
connection pool does not scan every open connection (each turn holds a listen stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import jwt

from worker.metrics import LISTEN_OPENED

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 4
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
REQUEST_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 3.0
DNS_CACHE_S = 300
MAX_IDLE_LISTENERS = 5000


class BotpressError(Exception):
    """A failed Chat API call. `status` is 0 when the API could not be reached at all."""

    def __init__(self, status: int, type_: str, message: str, body: Any = None) -> None:
        super().__init__(f"Botpress {type_} ({status}): {message}")
        self.status = status
        self.type = type_
        self.body = body

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES or self.status == 0

    @property
    def unauthorized(self) -> bool:
        return self.status == 401


def _is_error_body(body: Any) -> bool:
    """A 2xx whose body is the API's error shape is an error too."""
    return isinstance(body, dict) and {"code", "type", "message"} <= body.keys() and len(body) <= 5


def _error_from(status: int, body: Any) -> BotpressError:
    if isinstance(body, dict):
        return BotpressError(
            status, str(body.get("type", "Unknown")), str(body.get("message", "")), body
        )
    return BotpressError(status, "Unknown", str(body)[:200], body)


@dataclass(frozen=True)
class BotMessage:
    """A whole bot message: `message_created` from the bot, or a completed stream's message."""

    message: dict[str, Any]


@dataclass(frozen=True)
class UserMessage:
    """A message from the user side (our own posts echo back): a new turn has begun."""

    message: dict[str, Any]


@dataclass(frozen=True)
class StreamDelta:
    """The bot is generating a streamed message (`message_stream_delta`): not quiet yet.
    `text` is the delta itself, its spacing as the bot gave it."""

    stream_id: str
    text: str = ""


@dataclass(frozen=True)
class StreamEnded:
    """A streamed message completed or was aborted; a completion also yields its BotMessage."""

    stream_id: str
    aborted: bool = False


class ListenEnded:
    """The listen stream closed (dropped, or Botpress ended it)."""


LISTEN_ENDED = ListenEnded()
ListenSignal = BotMessage | UserMessage | StreamDelta | StreamEnded | ListenEnded


def parse_signal(signal: dict[str, Any]) -> list[ListenSignal]:
    """One SSE signal of the listen stream -> what a turn cares about (often nothing).

    Our own messages echo back with isBot false (UserMessage); the other signal types
    (event_created, participant_added/removed, message_deleted) are dropped here."""
    kind = signal.get("type")
    data = signal.get("data") or {}
    if not isinstance(data, dict):
        return []
    if kind == "message_stream_delta":
        delta = data.get("delta")
        return [StreamDelta(str(data.get("streamId")), delta if isinstance(delta, str) else "")]
    if kind in ("message_stream_complete", "message_stream_abort"):
        aborted = kind == "message_stream_abort"
        ended: list[ListenSignal] = [StreamEnded(str(data.get("streamId")), aborted)]
        message = data.get("message")
        if kind == "message_stream_complete" and isinstance(message, dict) and message:
            ended.insert(0, BotMessage({**message, "isBot": True}))
        return ended
    if kind == "message_created":
        return [BotMessage(data) if data.get("isBot") else UserMessage(data)]
    return []


class ConversationListener:
    """An open `GET /conversations/{id}/listen` stream, its signals parsed as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse, user_key: str) -> None:
        self._response = response
        self.user_key = user_key
        self.last_used = time.monotonic()
        # Set by whoever goes on reading after listen()'s block (a turn watching for trailing
        # messages); they then release() it.
        self.handed_off = False
        self.leftover: list[dict[str, Any]] = []
        self._signals: asyncio.Queue[ListenSignal] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def next(self, timeout_s: float) -> ListenSignal:
        """The next signal; TimeoutError when none came within timeout_s."""
        # asyncio.timeout, not wait_for: wait_for wraps the get in a task of its own (3.11), one
        # more loop pass per signal on the way to the caller's first token.
        async with asyncio.timeout(timeout_s):
            return await self._signals.get()

    def drain(self) -> bool:
        """Take what came while the stream was kept idle: bot messages the previous turn did not
        see are kept in `leftover` (its trailing messages); False when the stream has ended."""
        while not self._signals.empty():
            signal = self._signals.get_nowait()
            if signal is LISTEN_ENDED:
                return False
            if isinstance(signal, BotMessage):
                self.leftover.append(signal.message)
        return not self.closed

    async def _read(self) -> None:
        # SSE: "event: message" + "data: {json}" lines, a blank line ends a frame; "data: ping"
        # is a keep-alive.
        data_lines: list[str] = []
        try:
            async for raw in self._response.content:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    data_lines.append(line[5:].lstrip())
                elif line == "" and data_lines:
                    data = "\n".join(data_lines)
                    data_lines = []
                    if data == "ping":
                        continue
                    try:
                        signal = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(signal, dict):
                        for parsed in parse_signal(signal):
                            self._signals.put_nowait(parsed)
        except (TimeoutError, aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            self._signals.put_nowait(LISTEN_ENDED)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._response.close()


class BotpressClient:
    def __init__(
        self,
        base_url: str,
        encryption_key: str = "",
        max_attempts: int = MAX_ATTEMPTS,
        listen_keep_s: float = 0.0,
        max_idle_listeners: int = MAX_IDLE_LISTENERS,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._encryption_key = encryption_key
        self._max_attempts = max_attempts
        self._session: aiohttp.ClientSession | None = None
        # Listen streams kept open between a call's turns (oldest first), so a turn that lands
        # on the worker that served the call before skips opening one.
        self._listen_keep_s = listen_keep_s
        self._max_idle = max_idle_listeners
        self._idle: dict[str, ConversationListener] = {}

    @property
    def http(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=DNS_CACHE_S),
                timeout=aiohttp.ClientTimeout(
                    total=REQUEST_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S
                ),
                json_serialize=json.dumps,
            )
        return self._session

    @property
    def keeps_streams(self) -> bool:
        """BOT_LISTEN_KEEP_S > 0: a call's listen stream stays open between its turns."""
        return self._listen_keep_s > 0

    @property
    def signs_user_keys(self) -> bool:
        return bool(self._encryption_key)

    async def aclose(self) -> None:
        for listener in self._idle.values():
            await listener.close()
        self._idle.clear()
        if self._session is not None:
            await self._session.close()

    async def forget_listener(self, conversation_id: str) -> None:
        """The call is over: close its kept listen stream, if any."""
        listener = self._idle.pop(conversation_id, None)
        if listener is not None:
            await listener.close()

    async def _evict_idle(self) -> None:
        too_old = time.monotonic() - self._listen_keep_s
        while self._idle:
            conversation_id, oldest = next(iter(self._idle.items()))
            if oldest.last_used >= too_old and len(self._idle) <= self._max_idle:
                break
            del self._idle[conversation_id]
            await oldest.close()

    def sign_user_key(self, user_id: str) -> str:
        """Encryption-key mode: the x-user-key is an HS256 JWT {"id": userId} we sign ourselves."""
        return jwt.encode({"id": user_id}, self._encryption_key, algorithm="HS256")

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        *,
        deadline: float | None,
        what: str,
        landed: Callable[[], Awaitable[T | None]] | None = None,
    ) -> T:
        """The one retry loop for every Botpress request: `do()` until it succeeds, or the
        error is not retryable, or attempts run out, or the next wait would pass `deadline`.

        `landed` is asked before each retry whether the failed attempt took effect after all
        (a POST whose answer was lost): its non-None result is returned instead of retrying,
        so the bot never sees a turn twice."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await do()
            except BotpressError as error:
                backoff_s = self.retry_delay(error, attempt, deadline)
                if backoff_s is None:
                    raise
                log.info("botpress %s failed (%s), retrying", what, error.type)
            await asyncio.sleep(backoff_s)
            if landed is not None:
                try:
                    found = await landed()
                except BotpressError:
                    found = None
                if found is not None:
                    return found

    def retry_delay(
        self, error: BotpressError, attempt: int, deadline: float | None
    ) -> float | None:
        """Seconds to wait before retry number `attempt`, or None: give up (not retryable,
        out of attempts, or the wait would pass the turn's deadline)."""
        backoff_s = min(FIRST_BACKOFF_S * 2 ** (attempt - 1), MAX_BACKOFF_S)
        if (
            not error.retryable
            or attempt >= self._max_attempts
            or (deadline is not None and time.monotonic() + backoff_s > deadline)
        ):
            return None
        return backoff_s

    async def _request(
        self,
        method: str,
        path: str,
        *,
        user_key: str | None = None,
        body: Any = None,
        deadline: float | None = None,
        landed: Callable[[], Awaitable[Any]] | None = None,
    ) -> Any:
        headers = {"x-user-key": user_key} if user_key else {}
        url = f"{self._base}{path}"

        async def once() -> Any:
            try:
                status, parsed = await self._send(method, url, headers, body)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise BotpressError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
            if 200 <= status < 300 and not _is_error_body(parsed):
                return parsed
            raise _error_from(status if not 200 <= status < 300 else 500, parsed)

        return await self.call_with_retry(
            once, deadline=deadline, what=f"{method} {path}", landed=landed
        )

    async def _send(
        self, method: str, url: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        async with self.http.request(method, url, headers=headers, json=body) as resp:
            raw = await resp.read()
            parsed: Any = None
            if raw:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = raw.decode("utf-8", "replace")
            return resp.status, parsed

    async def create_user(self, user_id: str, deadline: float | None = None) -> str:
        """Shared mode: POST /users creates the user and returns its key."""
        data = await self._request("POST", "/users", body={"id": user_id}, deadline=deadline)
        return str(data["key"])

    async def get_or_create_user(self, user_key: str, deadline: float | None = None) -> None:
        await self._request(
            "POST", "/users/get-or-create", user_key=user_key, body={}, deadline=deadline
        )

    async def get_or_create_conversation(
        self, user_key: str, conversation_id: str, deadline: float | None = None
    ) -> None:
        await self._request(
            "POST",
            "/conversations/get-or-create",
            user_key=user_key,
            body={"id": conversation_id},
            deadline=deadline,
        )

    async def create_message(
        self,
        user_key: str,
        conversation_id: str,
        payload: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        deadline: float | None = None,
        landed: Callable[[], Awaitable[dict[str, Any] | None]] | None = None,
    ) -> dict[str, Any]:
        """POST /messages. `landed`: before a retry, the message if the failed try reached
        Botpress after all (a blind retry could make the bot see the turn twice)."""
        body: dict[str, Any] = {"conversationId": conversation_id, "payload": payload}
        if metadata:
            body["metadata"] = metadata

        async def found() -> dict[str, Any] | None:
            assert landed is not None
            message = await landed()
            return {"message": message} if message is not None else None

        data = await self._request(
            "POST",
            "/messages",
            user_key=user_key,
            body=body,
            deadline=deadline,
            landed=found if landed is not None else None,
        )
        return dict(data["message"])

    async def create_event(
        self,
        user_key: str,
        conversation_id: str,
        payload: dict[str, Any],
        deadline: float | None = None,
    ) -> None:
        await self._request(
            "POST",
            "/events",
            user_key=user_key,
            body={"conversationId": conversation_id, "payload": payload},
            deadline=deadline,
        )

    async def list_messages(
        self, user_key: str, conversation_id: str, deadline: float | None = None, pages: int = 1
    ) -> list[dict[str, Any]]:
        """The newest messages first, following `meta.nextToken` for up to `pages` pages."""
        messages: list[dict[str, Any]] = []
        next_token = ""
        for _ in range(pages):
            query = f"?nextToken={quote(next_token)}" if next_token else ""
            data = await self._request(
                "GET",
                f"/conversations/{conversation_id}/messages{query}",
                user_key=user_key,
                deadline=deadline,
            )
            messages.extend(data.get("messages", []))
            next_token = str((data.get("meta") or {}).get("nextToken") or "")
            if not next_token:
                break
        return messages

    @contextlib.asynccontextmanager
    async def listen(
        self, user_key: str, conversation_id: str, deadline: float | None = None
    ) -> AsyncIterator[ConversationListener]:
        """Subscribe (the stream is open once this yields), so nothing sent after is missed."""
        listener = self._idle.pop(conversation_id, None)
        if listener is not None and (listener.user_key != user_key or not listener.drain()):
            await listener.close()
            listener = None
        if listener is None:
            listener = await self._subscribe(user_key, conversation_id, deadline)
        reusable = False
        try:
            yield listener
            reusable = True
        finally:
            if not listener.handed_off:
                await self.release(conversation_id, listener, reusable)

    async def release(
        self, conversation_id: str, listener: ConversationListener, reusable: bool = True
    ) -> None:
        """Done with a listen stream: kept for the call's next turn (BOT_LISTEN_KEEP_S), or
        closed. A turn that hands its stream off (listener.handed_off) calls this itself."""
        if reusable and self._listen_keep_s > 0 and not listener.closed:
            listener.last_used = time.monotonic()
            self._idle[conversation_id] = listener
        else:
            await listener.close()
        await self._evict_idle()

    async def _subscribe(
        self, user_key: str, conversation_id: str, deadline: float | None
    ) -> ConversationListener:
        response = await self.call_with_retry(
            lambda: self._open_listen(user_key, conversation_id),
            deadline=deadline,
            what="listen",
        )
        LISTEN_OPENED.inc()
        return ConversationListener(response, user_key)

    async def _open_listen(self, user_key: str, conversation_id: str) -> aiohttp.ClientResponse:
        try:
            response = await self.http.get(
                f"{self._base}/conversations/{conversation_id}/listen",
                headers={"x-user-key": user_key, "accept": "text/event-stream"},
                # A listen stream lives as long as the turn; only the connect is bounded.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BotpressError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status < 300:
            raw = await response.read()
            response.release()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            raise _error_from(response.status, body)
        return response
