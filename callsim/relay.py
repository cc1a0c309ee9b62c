"""One ConversationRelay session, played from Twilio's side of the WebSocket.

Twilio opens the socket to the ``<ConversationRelay url>`` (the handshake signed like a webhook,
over the URL alone), sends ``setup``, then what the caller does: ``prompt`` (speech, final with
``last: true``, after partials when ``partialPrompts`` is on), ``dtmf`` (one frame per key,
when ``dtmfDetection`` is on), ``interrupt`` (the caller talked over the reply). The app answers
with ``text`` tokens, a talk cycle ending at ``last: true``, and may send ``play``,
``sendDigits``, ``language`` and ``end``.

Every frame the app sends is checked as Twilio checks it: an invalid one is a protocol error
(Twilio's 64107: an ``error`` frame back, the frame dropped), and 10 in a row close the socket
with 1007. Tests and load runs assert that none happened.

Timing follows callsim's rule: a talk cycle is timed from when its trigger (the prompt, the
setup, the start of a silence) was *scheduled*, so callsim falling behind counts against the
bridge, not for it.

Tokens after an interrupt: once callsim sends ``interrupt`` it sends a WebSocket ping right
behind it. A token of the cut-off reply that arrives before the pong was on its way before the
app could have read the interrupt (in flight, counted apart, no fault); one that arrives after
the pong and before the caller's next prompt is ``tokens_after_interrupt``, which must be 0.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from callsim import twiml
from callsim.script import HANG_UP, BargeIn, Dtmf, Reply, Script
from callsim.signing import SIGNATURE_HEADER, sign
from callsim.urls import OffsiteUrl, UrlMap, wire_url

#: Twilio's error for a frame it could not validate (the frame is dropped, the session goes on).
INVALID_FRAME_CODE = "64107"
#: ...and after this many invalid frames in a row it closes the socket with 1007.
MAX_INVALID_IN_A_ROW = 10
CLOSE_INVALID_PAYLOAD = 1007
#: What the <Connect action> gets when the socket could not be opened or dropped without `end`.
NETWORK_ERROR_CODE = "39001"
NETWORK_ERROR_MESSAGE = "Network connection to WebSocket server failed"
DEFAULT_REPLY_TIMEOUT_S = 15.0
HANDSHAKE_TIMEOUT_S = 5.0  # Twilio's connect timeout for webhooks, here for the socket
MAX_FRAME_CHARS = 200  # of an invalid frame, kept in the error record
#: A caller who is done still hears the last reply out before hanging up: Twilio speaks about
#: this fast (the edge's estimate too), and the caller allows this much more for an `end`.
TTS_WORDS_PER_S = 2.5
HANG_UP_GRACE_S = 0.5
APP_FRAME_TYPES = ("text", "play", "sendDigits", "language", "end")
_DIGITS = frozenset("0123456789*#wW")  # sendDigits: w = half a second's pause

SESSION_STATUSES = ("ended", "completed", "failed")


class FrameError(ValueError):
    """A frame from the app that Twilio would reject (error 64107)."""


def validate_frame(raw: str | bytes) -> dict[str, Any]:
    """The app's frame as a dict, or FrameError saying what Twilio would reject."""
    if isinstance(raw, bytes):
        raise FrameError("binary frame (Twilio takes JSON text frames only)")
    try:
        frame = json.loads(raw)
    except ValueError:
        raise FrameError("not JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("not a JSON object")
    kind = frame.get("type")
    if kind not in APP_FRAME_TYPES:
        raise FrameError(f"unknown type {kind!r}")
    if kind == "text":
        _require(frame, "token", str)
        _require(frame, "last", bool)
        _optional(frame, "lang", str)
        _optional(frame, "interruptible", bool)
        _optional(frame, "preemptible", bool)
    elif kind == "play":
        _require(frame, "source", str)
        _optional(frame, "loop", int)
        _optional(frame, "preemptible", bool)
        _optional(frame, "interruptible", bool)
        if not frame["source"]:
            raise FrameError("play: empty source")
        if frame.get("loop", 1) < 0:
            raise FrameError("play: negative loop")
    elif kind == "sendDigits":
        _require(frame, "digits", str)
        if not frame["digits"] or not set(frame["digits"]) <= _DIGITS:
            raise FrameError(f"sendDigits: digits {frame['digits']!r} are not 0-9, *, #, w")
    elif kind == "language":
        _optional(frame, "ttsLanguage", str)
        _optional(frame, "transcriptionLanguage", str)
        if "ttsLanguage" not in frame and "transcriptionLanguage" not in frame:
            raise FrameError("language: neither ttsLanguage nor transcriptionLanguage")
    else:  # end
        _optional(frame, "handoffData", str)
    return frame


def _require(frame: Mapping[str, Any], name: str, kind: type) -> None:
    if name not in frame:
        raise FrameError(f"{frame['type']}: missing {name}")
    _optional(frame, name, kind)


def _optional(frame: Mapping[str, Any], name: str, kind: type) -> None:
    value = frame.get(name)
    # bool is an int in Python; JSON true is not a number for Twilio.
    wrong = value is not None and (
        not isinstance(value, kind) or (kind is int and isinstance(value, bool))
    )
    if wrong or (name in frame and value is None):
        raise FrameError(f"{frame['type']}: {name} is not a {kind.__name__}: {value!r}")


@dataclass
class TalkCycle:
    """One reply of the app: tokens up to a ``text`` frame with ``last: true``."""

    session_id: str
    trigger: str  # what the app answers: setup, prompt, dtmf, silence, barge_in
    started_at: float  # when the trigger was scheduled (time.monotonic())
    first_token_at: float | None = None
    last_at: float | None = None  # the last:true frame
    tokens: list[str] = field(default_factory=list)
    interrupted: bool = False  # the caller cut it off (it never got its last:true)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def first_token_ms(self) -> float | None:
        at = self.first_token_at
        return None if at is None else (at - self.started_at) * 1000.0

    @property
    def complete_ms(self) -> float | None:
        return None if self.last_at is None else (self.last_at - self.started_at) * 1000.0


@dataclass
class ProtocolError:
    session_id: str
    at: float
    reason: str
    frame: str  # the start of what was received


@dataclass
class SessionRecord:
    session_id: str
    url: str
    status: str = "failed"  # one of SESSION_STATUSES
    handoff_data: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    started_at: float = 0.0  # the connection began (time.monotonic())
    handshake_ms: float | None = None  # to the socket's opening (None: it never opened)
    duration_s: float = 0.0


@dataclass
class RelayState:
    """What a call's relay sessions learned, across sessions (a reconnect continues it)."""

    cycles: list[TalkCycle] = field(default_factory=list)
    protocol_errors: list[ProtocolError] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    # Tokens of an interrupted reply received after the app had the interrupt (after the pong
    # to a ping sent right behind it): must stay 0, the app stops a reply it was told to stop.
    tokens_after_interrupt: int = 0
    # ...and those the app had sent before the interrupt reached it (a race, not a fault).
    tokens_in_flight_at_interrupt: int = 0
    interrupts: int = 0
    barge_ins_missed: int = 0  # the reply ended before the caller's cue to talk over it
    errors: list[str] = field(default_factory=list)  # e.g. no reply within the timeout
    # The caller's last turn got no complete reply yet (its time, its kind): a new session
    # waits for it first, timed from the original turn.
    pending: tuple[str, float] | None = None


def new_session_sid() -> str:
    return "VX" + secrets.token_hex(16)


def ws_transport_url(urls: UrlMap, public_ws_url: str) -> str:
    """The ws(s) URL to connect to for the public one in the TwiML (same mapping as HTTP)."""
    parts = urlsplit(public_ws_url)
    http = {"ws": "http", "wss": "https"}.get(parts.scheme.lower())
    if http is None:
        raise ValueError(f"not a ws(s) URL: {public_ws_url!r}")
    transport = urlsplit(urls.to_transport(urlunsplit((http, *parts[1:]))))
    return urlunsplit(({"http": "ws", "https": "wss"}[transport.scheme], *transport[1:]))


Events = Callable[..., None]  # called as event("bot_token", token), like _Call.event


class RelaySession:
    """Drive one session: returns when the app ends it, the caller hangs up or the socket
    fails; ``record.status`` says which (what the <Connect action> request will carry)."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
        urls: UrlMap,
        relay: twiml.ConversationRelay,
        *,
        base_params: Mapping[str, str],
        auth_token: str,
        script: Script,
        state: RelayState,
        heard: list[str],
        event: Events,
        think_time_s: float = 0.0,
        hangup_at: float | None = None,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        on_cycle: Callable[[TalkCycle], None] | None = None,
        hold_phrase: str | None = None,
    ) -> None:
        self.on_cycle = on_cycle
        # A reply that ends in this phrase ("one moment please") is not the answer: the caller
        # keeps waiting, and the answer's cycle is timed from the same turn.
        self._hold = " ".join(hold_phrase.lower().split()) if hold_phrase else None
        self.client = client
        self.urls = urls
        self.relay = relay
        self.base_params = base_params
        self.auth_token = auth_token
        self.script = script
        self.state = state
        self.heard = heard
        self.event = event
        self.think_time_s = think_time_s
        self.hangup_at = hangup_at
        self.reply_timeout_s = reply_timeout_s
        self.record = SessionRecord(session_id=new_session_sid(), url=relay.url)
        self.tts_language = relay.tts_language
        self.transcription_language = relay.transcription_language
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._changed = asyncio.Event()
        self._closed = False  # the socket is gone (closed by the app, or broken)
        self._ended = False  # the app sent `end`
        self._invalid_in_a_row = 0
        self._cycle: TalkCycle | None = None  # the reply being streamed
        self._expect: tuple[str, float] | None = None  # the trigger the next reply answers
        self._last_trigger: tuple[str, float] | None = None  # ...and the latest one, kept
        self._after_interrupt = False  # interrupt sent, the caller's prompt not yet
        self._fence: bytes | None = None  # the ping sent right after the interrupt, unanswered
        self._interruptible = True  # the latest text frame's own say, if it had one
        self._completed_cycles = 0
        self._speaking_until = 0.0  # time.monotonic() when Twilio has spoken all replies
        self.gave_up: str | None = None  # the caller hung up waiting for a reply

    # -- the socket --------------------------------------------------------------------------

    async def run(self) -> SessionRecord:
        record = self.record
        self.state.sessions.append(record)
        record.started_at = time.monotonic()
        self.event("relay_connect", self.relay.url)
        try:
            transport = ws_transport_url(self.urls, self.relay.url)
        except (OffsiteUrl, ValueError) as exc:
            return self._fail(NETWORK_ERROR_CODE, str(exc))
        headers = {
            # Over the URL exactly as written in the TwiML, with no parameters.
            SIGNATURE_HEADER: sign(self.relay.url, {}, self.auth_token),
            "User-Agent": "Twilio.TmeWs/1.0",
        }
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                # autoping off: the reader answers pings itself and sees the pongs it awaits.
                self._ws = await self.client.ws_connect(
                    wire_url(transport), headers=headers, autoping=False, max_msg_size=0
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return self._fail(NETWORK_ERROR_CODE, f"{NETWORK_ERROR_MESSAGE}: {exc}")
        reader = asyncio.create_task(self._read(self._ws))
        try:
            status = await self._converse()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self._ws.close()
            record.duration_s = time.monotonic() - record.started_at
        if status == "failed" and record.error_code is None:
            record.error_code, record.error_message = NETWORK_ERROR_CODE, NETWORK_ERROR_MESSAGE
        record.status = status
        self.event("relay_end", status)
        return record

    def _fail(self, code: str, message: str) -> SessionRecord:
        self.record.status = "failed"
        self.record.error_code = code
        self.record.error_message = NETWORK_ERROR_MESSAGE if code == NETWORK_ERROR_CODE else message
        self.state.errors.append(message)
        self.event("relay_end", "failed")
        return self.record

    async def _send(self, frame: dict[str, Any]) -> bool:
        if self._ws is None or self._closed:
            return False
        try:
            await self._ws.send_str(json.dumps(frame))
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            self._set_closed()
            return False
        return True

    def _set_closed(self) -> None:
        self._closed = True
        self._changed.set()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._on_frame(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await self._on_frame(bytes(msg.data))
                elif msg.type == aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == aiohttp.WSMsgType.PONG:
                    if msg.data == self._fence:
                        self._fence = None  # the app has the interrupt: nothing may follow
                        self._changed.set()
                else:  # ERROR
                    break
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self._set_closed()

    # -- frames from the app -----------------------------------------------------------------

    async def _on_frame(self, raw: str | bytes) -> None:
        now = time.monotonic()
        try:
            frame = validate_frame(raw)
        except FrameError as exc:
            await self._invalid(raw, str(exc), now)
            return
        self._invalid_in_a_row = 0
        kind = frame["type"]
        if kind == "text":
            self._on_text(frame, now)
        elif kind == "end":
            self._ended = True
            self.record.handoff_data = frame.get("handoffData")
            self.event("relay_app_end", frame.get("handoffData") or "")
        elif kind == "play":
            self.event("play", frame["source"])
        elif kind == "sendDigits":
            self.event("send_digits", frame["digits"])
        else:  # language
            self.tts_language = frame.get("ttsLanguage", self.tts_language)
            self.transcription_language = frame.get(
                "transcriptionLanguage", self.transcription_language
            )
            self.event("language", f"{self.tts_language}/{self.transcription_language}")
        self._changed.set()

    async def _invalid(self, raw: str | bytes, reason: str, now: float) -> None:
        text = raw if isinstance(raw, str) else repr(raw)
        self.state.protocol_errors.append(
            ProtocolError(self.record.session_id, now, reason, text[:MAX_FRAME_CHARS])
        )
        self.event("protocol_error", reason)
        self._invalid_in_a_row += 1
        await self._send({"type": "error", "description": f"Invalid message received: {text}"})
        if self._invalid_in_a_row >= MAX_INVALID_IN_A_ROW and self._ws is not None:
            self.record.error_code = INVALID_FRAME_CODE
            self.record.error_message = f"{MAX_INVALID_IN_A_ROW} invalid messages in a row"
            await self._ws.close(code=CLOSE_INVALID_PAYLOAD, message=b"invalid messages")
            self._set_closed()

    def _on_text(self, frame: Mapping[str, Any], now: float) -> None:
        if self._after_interrupt:
            # Twilio has stopped speaking this reply and drops what still comes of it. Sent
            # before the app could have read the interrupt (before the pong that follows it
            # on the socket): in flight, no fault. After it: the app did not stop.
            if self._fence is not None:
                self.state.tokens_in_flight_at_interrupt += 1
            else:
                self.state.tokens_after_interrupt += 1
                self.event("token_after_interrupt", frame["token"])
            return
        cycle = self._cycle
        if cycle is None:
            trigger, at = self._expect or ("unprompted", now)
            self._expect = None
            cycle = self._cycle = TalkCycle(self.record.session_id, trigger, at)
            self.state.cycles.append(cycle)
        if cycle.first_token_at is None:
            cycle.first_token_at = now
        cycle.tokens.append(frame["token"])
        self._interruptible = frame.get("interruptible", True)
        if frame["token"]:
            self.event("bot_token", frame["token"])
        if frame["last"]:
            cycle.last_at = now
            self._close_cycle(cycle)

    def _close_cycle(self, cycle: TalkCycle) -> None:
        self._cycle = None
        self._completed_cycles += 1
        self.state.pending = None
        # Twilio speaks replies one after the other: when the caller has heard this one.
        spoken_s = len(cycle.text.split()) / TTS_WORDS_PER_S
        self._speaking_until = max(self._speaking_until, time.monotonic()) + spoken_s
        text = " ".join(cycle.text.split())
        if text:
            self.heard.append(text)
        self.event("bot_reply", text)
        if self.on_cycle is not None:
            self.on_cycle(cycle)

    # -- the caller --------------------------------------------------------------------------

    def _done(self) -> bool:
        return self._ended or self._closed

    async def _until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Wait for ``condition`` (or the session's end, or the timeout); True if it holds."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self._done():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return condition()
        return True

    def _expecting(self, trigger: str, at: float) -> None:
        self._expect = self._last_trigger = (trigger, at)
        self.state.pending = (trigger, at)

    async def _await_reply(self) -> bool:
        """Wait for the next reply to complete (past hold phrases). False: the session is over
        (or the caller gave up waiting)."""
        while True:
            trigger = self._last_trigger
            if not await self._until(self._one_more_cycle(), self.reply_timeout_s):
                self._give_up()
                return False
            last = self.state.cycles[-1] if self.state.cycles else None
            if not self._is_hold(last) or trigger is None:
                return True
            self._expecting(*trigger)

    def _one_more_cycle(self) -> Callable[[], bool]:
        count = self._completed_cycles
        return lambda: self._completed_cycles > count

    def _is_hold(self, cycle: TalkCycle | None) -> bool:
        if self._hold is None or cycle is None or cycle.interrupted:
            return False
        return " ".join(cycle.text.lower().split()).endswith(self._hold)

    def _give_up(self) -> None:
        if not self._done():
            self.gave_up = f"no reply within {self.reply_timeout_s:g} s"
            self.state.errors.append(self.gave_up)  # the call's end reports it

    def _status(self) -> str:
        return "ended" if self._ended else "failed"

    async def _converse(self) -> str:
        setup_at = time.monotonic()
        self.record.handshake_ms = (setup_at - self.record.started_at) * 1000.0
        await self._send(self._setup_frame())
        greeting = self.relay.welcome_greeting
        if greeting:
            self.event("bot_say", greeting)  # Twilio speaks it itself: no frame for the app
            self.heard.append(greeting)
        if self.state.pending is not None:
            # A reconnect: the caller's last turn still waits for its answer.
            self._expect = self._last_trigger = self.state.pending
            need_reply = True
        else:
            need_reply = not greeting and not self.state.sessions[:-1]
            if need_reply:
                self._expecting("setup", setup_at)  # the greeting is timed from the setup
        while True:
            barge = self._take_barge_in()
            if need_reply:
                if barge is not None:
                    if not await self._barge_in(barge):
                        return self._status() if self._done() else "completed"
                    continue
                if not await self._await_reply():
                    return self._status() if self._done() else "completed"
            need_reply = True
            heard_at = time.monotonic()
            reply: Reply
            if self.hangup_at is not None and heard_at >= self.hangup_at:
                reply = HANG_UP
            else:
                reply = await self.script.next(tuple(self.heard))
            if reply is HANG_UP:
                # Twilio is still speaking the last reply; the app may end the call after it.
                heard_all_at = self._speaking_until + HANG_UP_GRACE_S
                await self._until(lambda: False, heard_all_at - time.monotonic())
                return self._status() if self._done() else "completed"
            self.heard.clear()
            at = max(heard_at + self.think_time_s, time.monotonic())
            # The app may end the session, or the socket drop, while the caller thinks.
            await self._until(lambda: False, at - time.monotonic())
            if self._done():
                return self._status()
            await self._act(reply, at)
            if self._done():
                return self._status()

    def _take_barge_in(self) -> BargeIn | None:
        peeked = self.script.peek()
        if isinstance(peeked, BargeIn):
            self.script.skip()
            return peeked
        return None

    async def _act(self, reply: Reply, at: float) -> None:
        if reply is None:
            self.event("silence")
            self._expecting("silence", at)  # the app's reprompt answers it
        elif isinstance(reply, Dtmf):
            self.event("caller_dtmf", reply.digits)
            if not self.relay.dtmf_detection:
                self._expecting("silence", at)  # Twilio does not report the keys
                return
            self._expecting("dtmf", at)
            for digit in reply.digits:
                await self._send({"type": "dtmf", "digit": digit})
        else:
            text = reply.text if isinstance(reply, BargeIn) else str(reply)
            self.event("caller_say", text)
            await self._prompt(text, "prompt", at)

    async def _prompt(self, text: str, trigger: str, at: float) -> None:
        lang = self.transcription_language
        words = text.split()
        if self.relay.partial_prompts and len(words) > 1:
            partial = " ".join(words[: len(words) // 2])
            partial_frame = {"type": "prompt", "voicePrompt": partial, "lang": lang, "last": False}
            await self._send(partial_frame)
        self._after_interrupt = False
        self._expecting(trigger, at)
        await self._send({"type": "prompt", "voicePrompt": text, "lang": lang, "last": True})

    async def _barge_in(self, barge: BargeIn) -> bool:
        """Talk over the reply after ``barge.after_tokens`` tokens. False: the session is over."""
        count = self._completed_cycles

        def cue() -> bool:
            cycle = self._cycle
            return (cycle is not None and len(cycle.tokens) >= barge.after_tokens) or (
                self._completed_cycles > count
            )

        if not await self._until(cue, self.reply_timeout_s):
            self._give_up()
            return False
        cycle = self._cycle
        allowed = self.relay.interruptible in ("speech", "any") and self._interruptible
        if cycle is None or not allowed:
            # Too late (the reply ended first), or Twilio would not let speech interrupt:
            # the caller says it after the reply, as a turn of its own.
            if cycle is None:
                self.state.barge_ins_missed += 1
            else:
                self.event("barge_in_refused", barge.text)
                if not await self._await_reply():
                    return False
            at = time.monotonic() + self.think_time_s
            await self._until(lambda: False, self.think_time_s)
            self.heard.clear()
            self.event("caller_say", barge.text)
            await self._prompt(barge.text, "prompt", at)
            return not self._done()
        now = time.monotonic()
        assert cycle.first_token_at is not None
        heard = cycle.text
        cycle.interrupted = True
        self._cycle = None
        self._speaking_until = now  # Twilio stops speaking at once
        self._after_interrupt = True
        self.state.interrupts += 1
        self.event("barge_in", barge.text)
        if self.on_cycle is not None:
            self.on_cycle(cycle)
        await self._send(
            {
                "type": "interrupt",
                "utteranceUntilInterrupt": heard,
                "durationUntilInterruptMs": int((now - cycle.first_token_at) * 1000),
            }
        )
        if self._ws is not None and not self._closed:
            self._fence = secrets.token_bytes(8)
            try:
                await self._ws.ping(self._fence)
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                self._set_closed()
        self.heard.clear()
        # The caller keeps talking, then Twilio sends what they said.
        at = now + barge.speak_s
        await self._until(lambda: False, barge.speak_s)
        if self._done():
            return False
        self.event("caller_say", barge.text)
        await self._prompt(barge.text, "barge_in", at)
        return not self._done()

    def _setup_frame(self) -> dict[str, Any]:
        p = self.base_params
        return {
            "type": "setup",
            "sessionId": self.record.session_id,
            "accountSid": p["AccountSid"],
            "parentCallSid": "",
            "callSid": p["CallSid"],
            "from": p["From"],
            "to": p["To"],
            "forwardedFrom": p.get("ForwardedFrom", ""),
            "callType": "PSTN",
            "callerName": p.get("CallerName", ""),
            "direction": p.get("Direction", "inbound"),
            "callStatus": "IN-PROGRESS",
            "customParameters": dict(self.relay.parameters),
        }


def action_params(record: SessionRecord, call_status: str) -> dict[str, str]:
    """The <Connect action> request's own fields (added to the call's usual ones)."""
    extra = {
        "CallStatus": call_status,
        "SessionId": record.session_id,
        "SessionStatus": record.status,
        "SessionDuration": str(round(record.duration_s)),
    }
    if record.status == "ended" and record.handoff_data is not None:
        extra["HandoffData"] = record.handoff_data
    if record.status == "failed":
        extra["ErrorCode"] = record.error_code or NETWORK_ERROR_CODE
        extra["ErrorMessage"] = record.error_message or NETWORK_ERROR_MESSAGE
    return extra
