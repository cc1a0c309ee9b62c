"""Outbound calls: the bot calls people. `POST /v1/calls`, `GET /v1/calls/{callSid}`, and what
the call's own webhooks need to know about it.

- `CallsApi` (the routes): bearer token, then body, then the rules; each refusal a JSON error
  and nothing placed. The call is recorded in Redis (OutboundStore.begin, which also holds
  OUTBOUND_MAX_CPS across every edge process and the Idempotency-Key) before Twilio is asked.
- `TwilioCalls`: Twilio's REST API through the twilio package's async client, at
  TWILIO_API_BASE_URL (callsim's stand-in in tests and load runs).
- `OutboundCalls`: the webhooks' side. When the person (or a machine) answers, Twilio POSTs
  our voice webhook with `Direction=outbound-api`, `AnsweredBy` and our id in the query; the
  opening turn then carries `outbound`, `answered_by` and the request's `context`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import falcon
import falcon.asgi
from redis.exceptions import RedisError
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from edge import metrics
from edge.guard import TwilioRequest
from edge.settings import EdgeSettings
from shared.callstore import poll_until
from shared.outbound_store import OutboundRecord, OutboundStore
from shared.pb import voicebridge_pb2 as pb

log = logging.getLogger(__name__)

#: Twilio's Direction of a call placed through its REST API.
OUTBOUND_DIRECTION = "outbound-api"
#: Every status callback Twilio can send for a call (it sends only `completed` unless told).
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
#: Our id in the call's webhook URLs (signed by Twilio along with the rest of the URL).
ID_PARAMETER = "outbound"
MAX_CONTEXT_BYTES = 4096
#: A JSON body: `to`, `from` and a context of MAX_CONTEXT_BYTES, with room for spacing.
MAX_BODY_BYTES = 8192
MAX_IDEMPOTENCY_KEY_CHARS = 255
#: Twilio's API answers in well under a second; an edge never holds a request longer than this.
TWILIO_TIMEOUT_S = 10.0
#: A replayed Idempotency-Key whose first request is still with Twilio waits this long for it.
REPLAY_WAIT_S = TWILIO_TIMEOUT_S + 1.0
#: After this, the edge that began a call and has no answer from Twilio is gone (its request
#: would have timed out): a replay of its key takes the call over (OutboundStore.take_over).
ASKER_LEASE_S = TWILIO_TIMEOUT_S + 0.5
FIELDS = frozenset({"to", "from", "context"})
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_CALL_ID = re.compile(r"^[0-9a-f]{24}$")


class ApiError(Exception):
    """A refusal: HTTP status, a JSON body, extra headers. Raised inside, answered once here."""

    def __init__(
        self, status: str, message: str, *, code: int | None = None, **headers: str
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message}
        if self.code is not None:
            error["code"] = self.code
        return {"error": error}


@dataclass(frozen=True)
class Placed:
    sid: str
    status: str


class TwilioUnreachable(Exception):
    """No answer from Twilio's API: the call may or may not exist."""


class TwilioCalls:
    """Twilio's Calls resource. Middleware for its lifespan: the HTTP session lives in the
    event loop of this gunicorn process, opened at startup and closed at shutdown."""

    def __init__(self, settings: EdgeSettings) -> None:
        self._settings = settings
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        s = self._settings
        if not s.outbound.enabled:
            return
        http = AsyncTwilioHttpClient(pool_connections=False)
        # Our own session: twilio's has no total timeout, and a request must not hang the API.
        http.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TWILIO_TIMEOUT_S))
        client = Client(s.account_sid, s.auth_token.value, http_client=http)
        # The package reads TWILIO_EDGE/TWILIO_REGION from the environment and would rewrite
        # the host of our base URL with them: TWILIO_API_BASE_URL alone says where to go.
        client.edge = client.region = None
        # Every Calls request goes to the api domain's base URL: point it at ours.
        client.api.base_url = s.outbound.twilio_api_base_url
        self._http, self._client = http, client

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self._http is not None:
            await self._http.close()

    async def create(self, **params: Any) -> Placed:
        """POST .../Calls.json; TwilioRestException when Twilio refuses, TwilioUnreachable when
        it does not answer."""
        assert self._client is not None, "the API is off (no API_TOKEN)"
        try:
            call = await self._client.calls.create_async(**params)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TwilioUnreachable(str(exc) or type(exc).__name__) from exc
        return Placed(str(call.sid), str(call.status or "queued"))


def twilio_error(exc: TwilioRestException | TwilioServiceException) -> tuple[int, str]:
    """Twilio's error code and message as its JSON gave them."""
    if isinstance(exc, TwilioServiceException):
        return int(exc.code), str(exc.detail or exc.title)
    # The package prefixes "Unable to create record: " to Twilio's own message.
    message = str(exc.msg).split(": ", 1)[-1] if ": " in str(exc.msg) else str(exc.msg)
    return int(exc.code or exc.status), message


class CallsApi:
    """POST /v1/calls and GET /v1/calls/{call_sid} (routed only when API_TOKEN is set)."""

    def __init__(self, settings: EdgeSettings, store: OutboundStore, twilio: TwilioCalls) -> None:
        self._settings = settings
        self._outbound = settings.outbound
        self._store = store
        self._twilio = twilio

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self._answer(resp, self._place(req, resp))

    async def on_get_call(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, call_sid: str
    ) -> None:
        await self._answer(resp, self._show(req, resp, call_sid))

    @staticmethod
    async def _answer(resp: falcon.asgi.Response, work: Any) -> None:
        """Errors become HTTP once, here: a refusal its JSON, Redis down 503."""
        try:
            await work
            metrics.OUTBOUND_REQUESTS.labels(resp.status_code).inc()
        except ApiError as err:
            resp.status = err.status
            resp.media = err.body()
            for name, value in err.headers.items():
                resp.set_header(name.replace("_", "-"), value)
            metrics.OUTBOUND_REQUESTS.labels(resp.status_code).inc()
        except RedisError as exc:
            log.warning("redis unavailable, outbound API refused: %s", exc)
            resp.status = falcon.HTTP_503
            resp.media = {"error": {"message": "state store unavailable; nothing was placed"}}
            metrics.OUTBOUND_REQUESTS.labels(resp.status_code).inc()

    def _authorize(self, req: falcon.asgi.Request) -> None:
        scheme, _, given = (req.get_header("Authorization") or "").partition(" ")
        expected = self._outbound.api_token.value.encode()
        # compare_digest on every request, a missing header too: no timing difference.
        ok = hmac.compare_digest(given.strip().encode(), expected)
        if not ok or scheme.lower() != "bearer":
            raise ApiError(
                falcon.HTTP_401, "missing or wrong bearer token", WWW_Authenticate="Bearer"
            )

    async def _show(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sid: str) -> None:
        self._authorize(req)
        record = await self._store.by_sid(sid) if sid.isascii() and sid.isalnum() else None
        if record is None:
            raise ApiError(falcon.HTTP_404, f"no outbound call {sid[:64]!r}")
        resp.media = record.as_api()

    async def _place(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._authorize(req)
        body = await self._read_body(req)
        to, from_, context_json = self._validate(body)
        key = req.get_header("Idempotency-Key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise ApiError(falcon.HTTP_422, "Idempotency-Key: 1 to 255 characters")
        record = OutboundRecord(
            call_id=secrets.token_hex(12),
            status="initiating",
            to=to,
            from_=from_,
            context_json=context_json,
            request_digest=hashlib.sha256(body).hexdigest(),
        )
        begun = await self._store.begin(record, key, self._outbound.max_cps)
        if begun.outcome == "busy":
            raise ApiError(
                falcon.HTTP_429,
                f"more than OUTBOUND_MAX_CPS={self._outbound.max_cps} calls per second",
                Retry_After="1",
            )
        if begun.outcome == "existing":
            await self._replay(begun.call_id, record.request_digest, resp)
            return
        placed = await self._ask_twilio(record)
        try:
            await self._store.placed(record.call_id, placed.sid, placed.status)
        except RedisError as exc:
            # The call exists: its webhooks carry our id and link the CallSid themselves.
            log.warning("redis unavailable, CallSid not recorded yet: %s", exc)
        log.info("outbound call placed", extra={"call_sid": placed.sid})
        resp.status = falcon.HTTP_202
        resp.media = {"callSid": placed.sid, "status": placed.status}

    async def _ask_twilio(self, record: OutboundRecord) -> Placed:
        s = self._settings
        query = urlencode({ID_PARAMETER: record.call_id})
        params: dict[str, Any] = {
            "to": record.to,
            "from_": record.from_,
            "url": f"{s.voice_url}?{query}",
            "method": "POST",
            # An edge process that dies while it holds the call's webhook (a machine's, held for
            # the bot's voicemail reply): Twilio asks again there, another edge answers it.
            "fallback_url": f"{s.fallback_url}?{query}",
            "fallback_method": "POST",
            "status_callback": f"{s.status_url}?{query}",
            "status_callback_method": "POST",
            "status_callback_event": list(STATUS_EVENTS),
        }
        if self._outbound.amd:
            # Twilio calls the Url once it knows: at once for a person, after the beep for a
            # machine (so what we say lands on the recording).
            params["machine_detection"] = "DetectMessageEnd"
        try:
            return await self._twilio.create(**params)
        except (TwilioRestException, TwilioServiceException) as exc:
            code, message = twilio_error(exc)
            log.warning("twilio refused the call: %s %s", code, message)
            await self._store.refused(record.call_id, code, message)
            raise ApiError(falcon.HTTP_502, message, code=code) from None
        except TwilioUnreachable as exc:
            # Twilio may have placed it: the record stays (its webhooks find it by our id).
            log.warning("twilio unreachable: %s", exc)
            await self._store.refused(record.call_id, 0, f"Twilio unreachable: {exc}")
            raise ApiError(falcon.HTTP_502, f"Twilio unreachable: {exc}") from None

    async def _replay(self, call_id: str, digest: str, resp: falcon.asgi.Response) -> None:
        """The key placed `call_id` before: the same answer, nothing placed. Its first request
        may still be with Twilio; wait for it (bounded)."""
        record = await self._store.get(call_id)
        if record is not None and record.request_digest != digest:
            raise ApiError(falcon.HTTP_422, "Idempotency-Key was used with another request body")

        async def look() -> tuple[OutboundRecord | None, bool]:
            """The record, and whether its asker is gone and we took it over."""
            record = await self._store.get(call_id)
            if record is None or record.sid or record.error_code is not None:
                return record, False
            return record, await self._store.take_over(call_id, ASKER_LEASE_S)

        def settled(got: tuple[OutboundRecord | None, bool]) -> bool:
            record, taken = got
            return taken or record is None or bool(record.sid) or record.error_code is not None

        record, taken = await poll_until(look, settled, REPLAY_WAIT_S)
        resp.set_header("Idempotent-Replayed", "true")
        if taken and record is not None:
            # The edge that began it died before Twilio answered it: ask in its place.
            log.info("outbound call taken over from a gone edge")
            placed = await self._ask_twilio(record)
            await self._store.placed(call_id, placed.sid, placed.status)
            resp.status = falcon.HTTP_202
            resp.media = {"callSid": placed.sid, "status": placed.status}
            return
        if record is not None and record.sid:
            resp.status = falcon.HTTP_202
            resp.media = {"callSid": record.sid, "status": record.status}
        elif record is not None and record.error_code is not None:
            raise ApiError(falcon.HTTP_502, record.error_message, code=record.error_code or None)
        else:
            raise ApiError(falcon.HTTP_409, "a request with this Idempotency-Key is in progress")

    async def _read_body(self, req: falcon.asgi.Request) -> bytes:
        if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
            raise ApiError(falcon.HTTP_413, f"body over {MAX_BODY_BYTES} bytes")
        body = await req.stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(falcon.HTTP_413, f"body over {MAX_BODY_BYTES} bytes")
        return body

    def _validate(self, body: bytes) -> tuple[str, str, str]:
        """(to, from, context JSON) of a request the rules allow."""
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(falcon.HTTP_400, "the body must be a JSON object") from None
        if not isinstance(data, dict):
            raise ApiError(falcon.HTTP_400, "the body must be a JSON object")
        unknown = set(data) - FIELDS
        if unknown:
            raise ApiError(falcon.HTTP_422, f"unknown fields: {', '.join(sorted(unknown))}")
        to, from_ = data.get("to"), data.get("from", self._outbound.from_number)
        if not isinstance(to, str) or not _E164.match(to):
            raise ApiError(falcon.HTTP_422, "`to` must be an E.164 number (+14155550100)")
        if not self._outbound.allows(to):
            raise ApiError(falcon.HTTP_422, "`to` is not allowed by OUTBOUND_ALLOWED_PREFIXES")
        if not isinstance(from_, str) or not _E164.match(from_):
            raise ApiError(falcon.HTTP_422, "`from` (or OUTBOUND_FROM) must be an E.164 number")
        context = data.get("context", {})
        if not isinstance(context, dict):
            raise ApiError(falcon.HTTP_422, "`context` must be a JSON object")
        context_json = json.dumps(context, separators=(",", ":"), ensure_ascii=False)
        if len(context_json.encode()) > MAX_CONTEXT_BYTES:
            raise ApiError(falcon.HTTP_413, f"`context` over {MAX_CONTEXT_BYTES} bytes")
        return to, from_, context_json


@dataclass(frozen=True)
class Opening:
    """What the opening turn of an outbound call tells the bot."""

    answered_by: str = ""
    context_json: str = "{}"

    @property
    def machine(self) -> bool:
        return self.answered_by.startswith("machine_")

    @property
    def fax(self) -> bool:
        return self.answered_by == "fax"

    def apply(self, turn: pb.TurnRequest) -> None:
        turn.outbound = True
        turn.answered_by = self.answered_by
        turn.context_json = self.context_json

    def fields(self) -> dict[str, str | bool]:
        """The TurnRequest fields."""
        return {
            "outbound": True,
            "answered_by": self.answered_by,
            "context_json": self.context_json,
        }


def call_id_of(req: falcon.asgi.Request) -> str | None:
    """Our id in a webhook's query (signed by Twilio), or None."""
    value = req.get_param(ID_PARAMETER) or ""
    return value if _CALL_ID.match(value) else None


def is_outbound(tw: TwilioRequest) -> bool:
    return tw.params.get("Direction") == OUTBOUND_DIRECTION


class OutboundCalls:
    """The webhooks' view of outbound calls. Redis trouble never stops a call: the opening
    then goes without the context."""

    def __init__(self, store: OutboundStore) -> None:
        self._store = store

    async def answered(self, tw: TwilioRequest, call_id: str | None) -> Opening:
        """The voice webhook of an outbound call: the record knows its CallSid and who
        answered; the opening turn gets the context."""
        answered_by = tw.params.get("AnsweredBy")
        extra = {"call_sid": tw.call_sid}
        try:
            if call_id is not None:
                await self._store.link(call_id, tw.call_sid)
            else:
                call_id = await self._store.id_of(tw.call_sid)
            record = None
            if call_id is not None:
                await self._store.advance(call_id, "in-progress", answeredBy=answered_by)
                record = await self._store.get(call_id)
        except RedisError as exc:
            log.warning("redis unavailable, outbound context not read: %s", exc, extra=extra)
            record = None
        log.info("outbound call answered by %s", answered_by or "?", extra=extra)
        return Opening(answered_by, record.context_json if record is not None else "{}")

    async def opening(self, call_sid: str, answered_by: str) -> Opening:
        """Relay mode: the session's opening turn, from what the voice webhook recorded."""
        try:
            record = await self._store.by_sid(call_sid)
        except RedisError:
            record = None
        return Opening(answered_by, record.context_json if record is not None else "{}")

    async def status(self, tw: TwilioRequest, call_id: str | None) -> None:
        """A status callback of an outbound call (our id in its query): keep its state."""
        if call_id is None:
            return
        p = tw.params
        try:
            await self._store.link(call_id, tw.call_sid)
            await self._store.advance(
                call_id,
                p.get("CallStatus"),
                answeredBy=p.get("AnsweredBy"),
                duration=p.get("CallDuration"),
            )
        except RedisError as exc:
            log.warning(
                "redis unavailable, outbound status not kept: %s",
                exc,
                extra={"call_sid": tw.call_sid},
            )
