"""Twilio's part of an outbound call once the REST request was accepted, and the party it reaches.

Who answers is decided by the number called (`CalleeTable`): by default its last digit,

    0-4 person   5 machine   6 fax   7 busy   8 no-answer   9 failed

and a longer suffix given with ``--callee SUFFIX=KIND`` wins over a shorter one. Then, as Twilio
does: status callbacks for each StatusCallbackEvent asked (``initiated``, ``ringing``,
``answered``, ``completed``; only ``completed`` when none is named), signed with the auth token
like every webhook; busy, no-answer and failed calls get only those. An answered call POSTs (or
GETs, per Method) the voice webhook at Url with ``Direction=outbound-api``,
``CallStatus=in-progress`` and, when MachineDetection was asked, ``AnsweredBy`` (``human``;
``machine_end_beep`` for DetectMessageEnd, ``machine_start`` for Enable; ``fax``), then follows
the TwiML exactly as `callsim call` does (callsim.call.place_call: gather and ConversationRelay
modes). A person speaks its script (``--say`` lines) and hangs up when it runs out; a machine or
a fax listens, stays silent once, and hangs up at the next turn, so a bridge that keeps talking
to a machine is seen, not hidden. With ``AsyncAmd=true`` the webhook carries no AnsweredBy and
the result goes to AsyncAmdStatusCallback instead.

Time is compressed: the phone rings ``ring_s`` before it is answered, and a no-answer rings
``no_answer_s`` (at most the request's Timeout), not a minute.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from callsim import twiml
from callsim.call import Event, place_call, signed_request
from callsim.script import Utterance
from callsim.signing import SIGNATURE_HEADER
from callsim.urls import wire_url

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
CALLEE_KINDS = ("person", "machine", "fax", "busy", "no-answer", "failed")
DEFAULT_TABLE: Mapping[str, str] = {
    **dict.fromkeys("01234", "person"),
    "5": "machine",
    "6": "fax",
    "7": "busy",
    "8": "no-answer",
    "9": "failed",
}
DEFAULT_PERSON_SAYS = ("Hello, who is this?", "Yes, that works for me.", "Thank you, goodbye.")
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
#: The call's status once it is over, by who was reached (a call that was answered: completed).
FINAL_STATUS = {"busy": "busy", "no-answer": "no-answer", "failed": "failed"}
FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
# What a carrier answers when the call does not connect (Twilio's SipResponseCode).
_SIP_CODES = {"completed": "200", "busy": "486", "no-answer": "487", "failed": "500"}
CALLBACK_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class CalleeTable:
    """Who answers a number: the longest matching suffix of its digits wins."""

    by_suffix: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TABLE))

    @classmethod
    def parse(cls, entries: Sequence[str]) -> CalleeTable:
        table = dict(DEFAULT_TABLE)
        for entry in entries:
            suffix, sep, kind = entry.partition("=")
            suffix, kind = suffix.strip().lstrip("+"), kind.strip()
            if not sep or not suffix.isdigit() or kind not in CALLEE_KINDS:
                raise ValueError(f"{entry!r}: expected DIGITS=KIND, KIND one of {CALLEE_KINDS}")
            table[suffix] = kind
        return cls(table)

    def kind_for(self, number: str) -> str:
        digits = number.lstrip("+")
        for length in range(len(digits), 0, -1):
            kind = self.by_suffix.get(digits[-length:])
            if kind is not None:
                return kind
        return "person"


@dataclass(frozen=True)
class CalleeSettings:
    table: CalleeTable = field(default_factory=CalleeTable)
    person_says: tuple[Utterance, ...] = DEFAULT_PERSON_SAYS
    ring_s: float = 0.2
    no_answer_s: float = 2.0
    think_time_s: float = 0.0
    webhook_timeout_s: float = 15.0


def twilio_time(at: float | None) -> str | None:
    """RFC 2822, as Twilio writes dates in resources and callbacks."""
    if at is None:
        return None
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(at))


def _answered_by(kind: str, machine_detection: str | None) -> str | None:
    if not machine_detection:
        return None
    if kind == "person":
        return "human"
    if kind == "fax":
        return "fax"
    return "machine_end_beep" if machine_detection == "DetectMessageEnd" else "machine_start"


@dataclass
class OutboundCall:
    """One call placed through the REST API: its resource, and what happened on it."""

    sid: str
    account_sid: str
    to: str
    from_: str
    url: str | None
    method: str
    fallback: tuple[str, str] | None  # FallbackUrl, FallbackMethod
    twiml: str | None
    status_callback: str | None
    status_callback_method: str
    status_events: frozenset[str]
    timeout_s: int
    machine_detection: str | None
    async_amd_callback: str | None
    async_amd_method: str
    kind: str
    status: str = "queued"
    answered_by: str | None = None
    requested_at: float = field(default_factory=time.time)  # wall clock: campaign compares
    updated_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    first_words_at: float | None = None
    ended_at: float | None = None
    heard: list[str] = field(default_factory=list)
    outcome: str | None = None  # the conversation's (callsim.call.OUTCOMES)
    done: bool = False  # ended, and its last status callback answered
    error: str | None = None
    webhooks: int = 0
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    _sequence: int = 0

    @property
    def duration_s(self) -> int | None:
        if self.ended_at is None:
            return None
        if self.answered_at is None:
            return 0
        return math.ceil(self.ended_at - self.answered_at)

    @property
    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}.json"

    def resource(self) -> dict[str, Any]:
        """The Call resource as Twilio's REST API writes it (what twilio-python parses)."""
        base = self.uri.removesuffix(".json")
        duration = self.duration_s
        return {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": self.answered_by,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": twilio_time(self.requested_at),
            "date_updated": twilio_time(self.updated_at),
            "direction": "outbound-api",
            "duration": None if duration is None else str(duration),
            "end_time": twilio_time(self.ended_at),
            "forwarded_from": None,
            "from": self.from_,
            "from_formatted": self.from_,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": self.sid,
            "start_time": twilio_time(self.answered_at),
            "status": self.status,
            "subresource_uris": {
                name: f"{base}/{path}.json"
                for name, path in (
                    ("notifications", "Notifications"),
                    ("recordings", "Recordings"),
                    ("payments", "Payments"),
                    ("events", "Events"),
                    ("siprec", "Siprec"),
                    ("streams", "Streams"),
                    ("transcriptions", "Transcriptions"),
                    ("user_defined_message_subscriptions", "UserDefinedMessageSubscriptions"),
                    ("user_defined_messages", "UserDefinedMessages"),
                )
            },
            "to": self.to,
            "to_formatted": self.to,
            "trunk_sid": None,
            "uri": self.uri,
        }

    def summary(self) -> dict[str, Any]:
        """What callsim saw of the call (`GET /_callsim/calls`): outcome and timings."""
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "kind": self.kind,
            "status": self.status,
            "answered_by": self.answered_by,
            "done": self.done,
            "requested_at": self.requested_at,
            "answered_at": self.answered_at,
            "first_words_at": self.first_words_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s,
            "heard": list(self.heard),
            "outcome": self.outcome,
            "error": self.error,
            "webhooks": self.webhooks,
            "callbacks": list(self.callbacks),
        }

    def base_params(self) -> dict[str, str]:
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": self.sid,
            "Called": self.to,
            "Caller": self.from_,
            "Direction": "outbound-api",
            "From": self.from_,
            "To": self.to,
        }


class Callee:
    """Plays calls to the end: one `play(call)` task per accepted REST request."""

    def __init__(
        self, client: aiohttp.ClientSession, auth_token: str, settings: CalleeSettings
    ) -> None:
        self.client = client
        self.auth_token = auth_token
        self.settings = settings

    async def play(self, call: OutboundCall) -> None:
        try:
            await self._play(call)
        except Exception as exc:  # the stand-in itself broke: say so on the call and its log
            log.exception("callsim twilio-api: call %s", call.sid)
            call.error = f"callsim: {type(exc).__name__}: {exc}"
            if not call.done:
                await self._finish(call, "failed")

    async def _play(self, call: OutboundCall) -> None:
        await self._callback(call, "initiated", "initiated")
        if call.kind in ("failed", "busy"):
            await self._finish(call, FINAL_STATUS[call.kind])
            return
        self._set(call, "ringing")
        await self._callback(call, "ringing", "ringing")
        if call.kind == "no-answer":
            await asyncio.sleep(min(float(call.timeout_s), self.settings.no_answer_s))
            await self._finish(call, "no-answer")
            return
        await asyncio.sleep(self.settings.ring_s)
        call.answered_at = time.time()
        if call.async_amd_callback is None:
            call.answered_by = _answered_by(call.kind, call.machine_detection)
        self._set(call, "in-progress")
        await self._callback(call, "answered", "in-progress")
        if call.async_amd_callback is not None:
            asyncio.ensure_future(self._async_amd(call)).add_done_callback(_retrieve)
        await self._converse(call)
        await self._finish(call, "completed")

    async def _converse(self, call: OutboundCall) -> None:
        def on_event(event: Event) -> None:
            if event[0] in ("bot_say", "bot_token", "bot_reply") and event[1]:
                if call.first_words_at is None:
                    call.first_words_at = time.time()
                if event[0] != "bot_token":
                    call.heard.append(event[1])

        if call.url is None:  # inline Twiml: its <Say>s are heard, nothing is requested
            assert call.twiml is not None
            doc = twiml.parse(call.twiml)
            for verb in doc.verbs:
                if isinstance(verb, twiml.Say):
                    on_event(("bot_say", verb.text))
            call.outcome = "hangup_by_app"
            return
        person = call.kind == "person"
        says: Sequence[Utterance] = self.settings.person_says if person else (None,)
        answer_params = {"AnsweredBy": call.answered_by} if call.answered_by else {}
        result = await place_call(
            self.client,
            call.url,
            account_sid=call.account_sid,
            auth_token=self.auth_token,
            caller=list(says),
            from_number=call.from_,
            to_number=call.to,
            call_sid=call.sid,
            think_time_s=self.settings.think_time_s,
            webhook_timeout_s=self.settings.webhook_timeout_s,
            on_event=on_event,
            direction="outbound-api",
            answer_params=answer_params,
            voice_method=call.method,
            fallback=call.fallback,
        )
        call.outcome, call.webhooks = result.outcome, len(result.webhooks)
        if result.error is not None:
            call.error = result.error

    async def _async_amd(self, call: OutboundCall) -> None:
        assert call.async_amd_callback is not None
        await asyncio.sleep(self.settings.ring_s)  # detection takes a moment after the answer
        call.answered_by = _answered_by(call.kind, call.machine_detection or "Enable")
        params = {
            "AccountSid": call.account_sid,
            "CallSid": call.sid,
            "AnsweredBy": call.answered_by or "unknown",
            "MachineDetectionDuration": str(int(self.settings.ring_s * 1000)),
        }
        await self._send(call, "amd", call.async_amd_callback, call.async_amd_method, params)

    def _set(self, call: OutboundCall, status: str) -> None:
        call.status = status
        call.updated_at = time.time()

    async def _finish(self, call: OutboundCall, status: str) -> None:
        call.ended_at = time.time()
        self._set(call, status)
        try:
            await self._callback(call, "completed", status)
        finally:
            call.done = True

    async def _callback(self, call: OutboundCall, event: str, call_status: str) -> None:
        if call.status_callback is None or event not in call.status_events:
            return
        params = {
            **call.base_params(),
            "CallStatus": call_status,
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(call._sequence),
            "Timestamp": twilio_time(time.time()) or "",
        }
        call._sequence += 1
        if call.answered_by is not None and event in ("answered", "completed"):
            params["AnsweredBy"] = call.answered_by
        if event == "completed":
            duration = call.duration_s or 0
            params["CallDuration"] = str(duration)
            params["Duration"] = str(math.ceil(duration / 60))  # billed minutes
            params["SipResponseCode"] = _SIP_CODES.get(call_status, "200")
        await self._send(call, event, call.status_callback, call.status_callback_method, params)

    async def _send(
        self, call: OutboundCall, event: str, url: str, method: str, params: dict[str, str]
    ) -> None:
        """One signed callback; its answer is ignored, as Twilio ignores it (but recorded)."""
        entry: dict[str, Any] = {"event": event, "CallStatus": params.get("CallStatus")}
        call.callbacks.append(entry)
        try:
            url, signature, data = signed_request(method, url, params, self.auth_token)
            headers = {
                SIGNATURE_HEADER: signature,
                "User-Agent": "TwilioProxy/1.1",
                "I-Twilio-Idempotency-Token": f"{call.sid}-{secrets.token_hex(8)}",
            }
            async with self.client.request(
                method,
                wire_url(url),
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_S),
            ) as response:
                await response.read()
                entry["http_status"] = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
