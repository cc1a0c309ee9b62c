"""The checks every Twilio webhook passes before anything is written, as one middleware.

Size 413, media type 415, form fields 400, signature or account 403, CallSid 400, Digits that
are not keys 400: a refused webhook changes nothing. A resource opts in with
`twilio_webhook = True`; its responders find the checked request on `req.context.twilio`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import falcon
import falcon.asgi

from edge.signature import FormParams, TwilioAuth

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELD_CHARS = 4096
MAX_FIELD_NAME_CHARS = 64
MAX_FORM_FIELDS = 200
MAX_CALL_SID_CHARS = 64
MAX_SMALL_INT_DIGITS = 6
#: The keys of a phone's keypad, as Twilio reports them (Gather `Digits`, relay `dtmf` frames).
DTMF_KEYS = frozenset("0123456789*#")
#: The most keys one turn takes (an account or card number fits; more is not a caller's).
MAX_DIGITS = 32


class TwilioRequest:
    """A checked webhook: its form fields, and the call it belongs to."""

    __slots__ = ("params", "call_sid")

    def __init__(self, params: FormParams) -> None:
        self.params = params
        self.call_sid = params.get("CallSid")


def parse_small_int(value: str | None) -> int | None:
    """A plain ASCII number of at most 6 digits ('²'.isdigit() is True, but int() refuses it)."""
    if (
        value is None
        or not (value.isascii() and value.isdigit())
        or len(value) > MAX_SMALL_INT_DIGITS
    ):
        return None
    return int(value)


def is_call_sid(value: str) -> bool:
    """A CallSid we accept: ASCII letters and digits, at most 64 of them (webhook or socket)."""
    return 0 < len(value) <= MAX_CALL_SID_CHARS and value.isascii() and value.isalnum()


def is_digits(value: str) -> bool:
    """Keys we accept as one turn: 1 to MAX_DIGITS of 0-9, * and #."""
    return 0 < len(value) <= MAX_DIGITS and set(value) <= DTMF_KEYS


class WebhookGuard:
    """Falcon middleware: refuses bad webhooks with a clear HTTP error before any responder."""

    def __init__(self, auth: TwilioAuth, max_body_bytes: int) -> None:
        self._auth = auth
        self._max_body = max_body_bytes

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        if getattr(resource, "twilio_webhook", False):
            req.context.twilio = await self.check(req)

    async def check(self, req: falcon.asgi.Request) -> TwilioRequest:
        if req.content_length is not None and req.content_length > self._max_body:
            raise falcon.HTTPContentTooLarge(description="request body too large")
        media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
        if media_type != FORM_TYPE:
            raise falcon.HTTPUnsupportedMediaType(description=f"expected {FORM_TYPE}")
        body = await req.stream.read(self._max_body + 1)
        if len(body) > self._max_body:
            raise falcon.HTTPContentTooLarge(description="request body too large")
        try:
            pairs = parse_qsl(
                body.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=False,
                max_num_fields=MAX_FORM_FIELDS,
            )
        except (UnicodeDecodeError, ValueError):
            raise falcon.HTTPBadRequest(description="malformed form body") from None
        if any(len(v) > MAX_FIELD_CHARS or len(k) > MAX_FIELD_NAME_CHARS for k, v in pairs):
            raise falcon.HTTPBadRequest(description="form field too long")
        params = FormParams(pairs)
        signature = req.get_header("X-Twilio-Signature") or ""
        if not self._auth.is_valid(req.path, req.query_string, params, signature):
            raise falcon.HTTPForbidden(description="invalid X-Twilio-Signature")
        if not self._auth.is_our_account(params.get("AccountSid")):
            raise falcon.HTTPForbidden(description="unexpected AccountSid")
        call_sid = params.get("CallSid")
        if not call_sid:
            raise falcon.HTTPBadRequest(description="missing CallSid")
        if not is_call_sid(call_sid):
            raise falcon.HTTPBadRequest(description="malformed CallSid")
        if any(d and not is_digits(d) for d in params.getall("Digits")):
            raise falcon.HTTPBadRequest(description="malformed Digits")
        return TwilioRequest(params)
