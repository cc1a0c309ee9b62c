"""One inbound call, driven the way Twilio drives it: webhook, TwiML, next webhook, ... hang-up.

Every request is a signed form POST (or GET when TwiML asks) carrying the parameters Twilio
sends. A ``<Dial>`` reaches a simulated person who answers (the default), is busy, does not
answer or cannot be reached, per the number or SIP URI dialled (``dial_outcomes``); Twilio then
posts the Dial's action with DialCallStatus and follows its TwiML.

Latency is measured from the time a request was *scheduled* (when the caller stopped talking),
not from when it was sent: if callsim itself falls behind under load, that delay is counted
against the system, as a caller would feel it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp

from callsim import twiml
from callsim.relay import RelaySession, RelayState, TalkCycle, action_params
from callsim.script import HANG_UP, BargeIn, Dtmf, Reply, Script, ScriptFn, Utterance
from callsim.signing import SIGNATURE_HEADER, sign
from callsim.urls import OffsiteUrl, UrlMap, wire_url

# Twilio gives a webhook 15 s in total, then plays "an application error has occurred".
TWILIO_WEBHOOK_TIMEOUT_S = 15.0
DEFAULT_MAX_WEBHOOKS = 50
SPEECH_CONFIDENCE = "0.92"
DEFAULT_HOLD_PHRASE = "One moment please."  # the edge's default HOLD_PHRASE

Event = tuple[str, ...]  # ("bot_say", text), ("caller_say", text), ("silence",), ...
OUTCOMES = ("hangup_by_app", "caller_hung_up", "error", "invalid_twiml")
#: What a dialled person does (`dial_outcomes` values): Twilio's DialCallStatus.
DIAL_OUTCOMES = ("completed", "busy", "no-answer", "failed", "canceled")
#: How long a simulated person who answers talks (DialCallDuration of a completed dial).
DIAL_TALK_S = 42


#: Twilio's header naming one webhook request: the same on each of its retries.
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"


async def _headers_sent(
    session: aiohttp.ClientSession,
    ctx: types.SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    sent = ctx.trace_request_ctx
    if isinstance(sent, asyncio.Event):
        sent.set()


#: A session with this trace config lets a WebhookRetry time Twilio's read timeout from when
#: the request is on the wire, as Twilio does: not while its connection is still being retried
#: (faultsuite's ConnectRetry), which would send the retry before the first attempt arrives.
ON_THE_WIRE = aiohttp.TraceConfig()
ON_THE_WIRE.on_request_headers_sent.append(_headers_sent)


@dataclass(frozen=True)
class WebhookRetry:
    """Twilio retrying a webhook: no answer within `after_s`, the same request again (same
    body, signature and idempotency token). `cut_first`: the first connection is closed (as
    Twilio's read timeout does) rather than left waiting. Only webhooks of `kinds` are retried,
    each at most once."""

    after_s: float
    cut_first: bool = True
    kinds: frozenset[str] = frozenset({"gather"})


@dataclass
class WebhookRecord:
    # "start", "gather" (a Gather action), "redirect", "relay_action" (a <Connect action>),
    # "dial_action" (a <Dial action>), "status"
    kind: str
    url: str  # the public URL, as Twilio requested and signed it
    method: str
    params: dict[str, str]
    scheduled_at: float  # time.monotonic()
    sent_at: float = 0.0
    status: int | None = None  # None: no HTTP response (timeout, connection error)
    latency_ms: float = 0.0  # from scheduled_at to the full response
    body: str = ""  # the raw TwiML
    error: str | None = None
    said: tuple[str, ...] = ()  # every <Say> text in the response, in document order
    after_silence: bool = False  # the caller was silent at the Gather that led here
    ended_call: bool = False  # this response ended the call (hang-up, error, invalid TwiML)
    retried_at: float = 0.0  # when the same request was sent again (WebhookRetry); 0: never


@dataclass
class CallResult:
    call_sid: str
    outcome: str = "hangup_by_app"  # one of OUTCOMES
    transcript: list[Event] = field(default_factory=list)
    webhooks: list[WebhookRecord] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0
    relay: RelayState | None = None  # set once the call met a <Connect><ConversationRelay>

    def bot_said(self) -> list[str]:
        """What the caller heard: every <Say>, and every relay reply (as far as it got)."""
        return [e[1] for e in self.transcript if e[0] in ("bot_say", "bot_reply") and e[1]]


@dataclass(frozen=True)
class _Next:
    """The request Twilio makes after following a document."""

    kind: str
    url: str
    method: str
    extra: dict[str, str]
    scheduled_at: float


class _CallEnded(Exception):
    pass


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def signed_request(
    method: str, url: str, params: Mapping[str, str], auth_token: str
) -> tuple[str, str, dict[str, str] | None]:
    """(url, X-Twilio-Signature, form body) of a webhook as Twilio sends it: a GET carries the
    parameters in the URL's query (appended to its own) and signs that URL alone."""
    if method == "GET":
        url = url + ("&" if "?" in url else "?") + urlencode(params)
        return url, sign(url, {}, auth_token), None
    return url, sign(url, params, auth_token), dict(params)


class _Call:
    def __init__(
        self,
        client: aiohttp.ClientSession,
        urls: UrlMap,
        script: Script,
        base_params: dict[str, str],
        auth_token: str,
        *,
        think_time_s: float,
        hangup_at: float | None,
        max_webhooks: int,
        webhook_timeout_s: float,
        realtime: bool,
        on_event: Callable[[Event], None] | None,
        on_webhook: Callable[[WebhookRecord], None] | None,
        on_cycle: Callable[[TalkCycle], None] | None = None,
        hold_phrase: str | None = None,
        dial_outcomes: Mapping[str, str] | None = None,
        retry: WebhookRetry | None = None,
        fallback: tuple[str, str] | None = None,
    ) -> None:
        self.retry = retry
        self.fallback = fallback
        self.dial_outcomes = dict(dial_outcomes or {})
        for target, outcome in self.dial_outcomes.items():
            if outcome not in DIAL_OUTCOMES:
                raise ValueError(
                    f"dial outcome for {target}: {outcome!r} is not in {DIAL_OUTCOMES}"
                )
        self.on_cycle = on_cycle
        self.hold_phrase = hold_phrase
        self.client = client
        self.urls = urls
        self.script = script
        self.base_params = base_params
        self.auth_token = auth_token
        self.think_time_s = think_time_s
        self.hangup_at = hangup_at
        self.max_webhooks = max_webhooks
        self.webhook_timeout_s = webhook_timeout_s
        self.realtime = realtime
        self.on_event = on_event
        self.on_webhook = on_webhook
        self.result = CallResult(call_sid=base_params["CallSid"])
        self.heard: list[str] = []  # bot words since the caller last spoke
        self.silent_before_next = False

    def event(self, *event: str) -> None:
        self.result.transcript.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def end(self, outcome: str, error: str | None = None) -> _CallEnded:
        self.result.outcome = outcome
        if error is not None:
            self.result.error = error
            self.event("error", error)
        return _CallEnded()

    async def request(
        self,
        kind: str,
        url: str,
        method: str,
        extra: dict[str, str],
        scheduled_at: float,
        call_status: str,
    ) -> WebhookRecord:
        """Send one signed webhook; never raises for HTTP trouble, the record says what happened."""
        params = {**self.base_params, "CallStatus": call_status, **extra}
        record = WebhookRecord(
            kind=kind,
            url=url,
            method=method,
            params=params,
            scheduled_at=scheduled_at,
            after_silence=self.silent_before_next,
        )
        self.silent_before_next = False
        self.result.webhooks.append(record)
        try:
            url, signature, data = signed_request(method, url, params, self.auth_token)
            transport_url = wire_url(self.urls.to_transport(url))
        except (OffsiteUrl, ValueError) as exc:
            record.error = str(exc)
            return record
        headers = {
            SIGNATURE_HEADER: signature,
            "User-Agent": "TwilioProxy/1.1",
            IDEMPOTENCY_HEADER: f"{self.base_params['CallSid']}-{secrets.token_hex(8)}",
        }
        await _sleep_until(scheduled_at)
        record.sent_at = time.monotonic()

        async def send(sent: asyncio.Event | None = None) -> tuple[int, str]:
            async with (
                asyncio.timeout(self.webhook_timeout_s),
                self.client.request(
                    method,
                    transport_url,
                    data=data,  # a dict: sent form-encoded, the params exactly as signed
                    headers=headers,
                    allow_redirects=False,  # a 3xx is the answer, as Twilio reports it
                    timeout=aiohttp.ClientTimeout(total=self.webhook_timeout_s),
                    trace_request_ctx=sent,
                ) as response,
            ):
                return response.status, _decode(await response.read(), response.charset)

        try:
            if self.retry is not None and kind in self.retry.kinds:
                record.status, record.body = await self._with_retry(send, record)
            else:
                record.status, record.body = await send()
        except TimeoutError:
            record.error = f"application error: no response within {self.webhook_timeout_s:g} s"
        except aiohttp.ClientError as exc:
            record.error = f"application error: {type(exc).__name__}: {exc}"
        done = time.monotonic()
        record.latency_ms = (done - scheduled_at) * 1000.0
        if record.error is None and not 200 <= (record.status or 0) < 300:
            record.error = f"application error: HTTP {record.status}"
        return record

    async def _with_retry(
        self,
        send: Callable[[asyncio.Event | None], Awaitable[tuple[int, str]]],
        record: WebhookRecord,
    ) -> tuple[int, str]:
        """The answer Twilio uses: the first attempt's if it comes within retry.after_s of its
        request going out, else the retry's (the first is cut, or left waiting and its answer
        ignored)."""
        assert self.retry is not None
        sent = asyncio.Event()
        first = asyncio.ensure_future(send(sent))
        if ON_THE_WIRE in self.client.trace_configs:
            on_wire = asyncio.ensure_future(sent.wait())
            await asyncio.wait({first, on_wire}, return_when=asyncio.FIRST_COMPLETED)
            on_wire.cancel()
        done, _ = await asyncio.wait({first}, timeout=self.retry.after_s)
        if first in done:
            return first.result()
        record.retried_at = time.monotonic()
        self.event("retry", record.url)
        if self.retry.cut_first:
            first.cancel()  # closes its connection
        # Either way its outcome is not the call's: retrieve it so nothing warns.
        first.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await send(None)

    async def run(
        self, voice_url: str, start_at: float, call_status: str, method: str = "POST"
    ) -> None:
        nxt: _Next | None = _Next("start", voice_url, method, {}, start_at)
        while nxt is not None:
            if len(self.result.webhooks) >= self.max_webhooks:
                raise self.end("error", f"more than {self.max_webhooks} webhooks: TwiML loop?")
            record = await self.request(
                nxt.kind, nxt.url, nxt.method, nxt.extra, nxt.scheduled_at, call_status
            )
            call_status = "in-progress"
            try:
                outcome, doc = "error", None
                if record.error is None:
                    try:
                        doc = twiml.parse(record.body)
                    except twiml.TwimlError as exc:
                        outcome, record.error = "invalid_twiml", f"invalid TwiML: {exc}"
                if doc is None and self.fallback is not None and nxt.kind != "fallback":
                    # Twilio requests the FallbackUrl at once when it cannot retrieve (11200) or
                    # parse (12100) the TwiML, with that failure's code and URL.
                    code = "12100" if outcome == "invalid_twiml" else "11200"
                    self.event("fallback", nxt.url, code)
                    url, method = self.fallback
                    extra = {"ErrorCode": code, "ErrorUrl": nxt.url}
                    nxt = _Next("fallback", url, method, extra, time.monotonic())
                    continue
                if doc is None:
                    raise self.end(outcome, record.error)
                record.said = _said(doc)
                nxt = await self.follow(doc, nxt.url)
            except _CallEnded:
                # The caller putting the phone down is not something this response did.
                record.ended_call = self.result.outcome != "caller_hung_up"
                raise
            finally:
                if self.on_webhook is not None:
                    self.on_webhook(record)

    async def play(self, verb: twiml.Say | twiml.Play | twiml.Pause) -> None:
        if isinstance(verb, twiml.Say):
            self.event("bot_say", verb.text)
            self.heard.append(verb.text)
        elif isinstance(verb, twiml.Play):
            self.event("play", verb.url)
        else:
            self.event("pause", f"{verb.length_s:g}")
            if self.realtime:
                await asyncio.sleep(verb.length_s)

    async def follow(self, doc: twiml.Document, doc_url: str) -> _Next | None:
        for verb in doc.verbs:
            if isinstance(verb, twiml.Say | twiml.Play | twiml.Pause):
                await self.play(verb)
            elif isinstance(verb, twiml.Gather):
                nxt = await self.gather(verb, doc_url)
                if nxt is not None:
                    return nxt
            elif isinstance(verb, twiml.Connect):
                nxt = await self.connect(verb, doc_url)
                if nxt is not None:
                    return nxt
            elif isinstance(verb, twiml.Dial):
                nxt = self.dial(verb, doc_url)
                if nxt is not None:
                    return nxt
            elif isinstance(verb, twiml.Redirect):
                url = twiml.resolve(doc_url, verb.url)
                self.event("redirect", url)
                return _Next("redirect", url, verb.method, {}, time.monotonic())
            else:  # Hangup, Reject
                self.event("hangup")
                raise self.end("hangup_by_app")
        # Twilio hangs up when it runs out of verbs.
        self.event("hangup")
        raise self.end("hangup_by_app")

    def dial(self, verb: twiml.Dial, doc_url: str) -> _Next | None:
        """The dialled person answers (and talks DIAL_TALK_S), or not, per `dial_outcomes`;
        then Twilio posts the action, if any, or goes on with the next verb."""
        outcome = self.dial_outcomes.get(verb.target, "completed")
        self.event("dial", verb.target, outcome)
        if verb.action is None:
            return None
        extra = {
            "DialCallStatus": outcome,
            "DialCallSid": new_call_sid(),
            "DialCallDuration": str(DIAL_TALK_S if outcome == "completed" else 0),
        }
        url = twiml.resolve(doc_url, verb.action)
        return _Next("dial_action", url, verb.method, extra, time.monotonic())

    async def connect(self, verb: twiml.Connect, doc_url: str) -> _Next | None:
        """Play a ConversationRelay session; then Twilio requests the action, if any, or goes
        on with the next verb."""
        if self.result.relay is None:
            self.result.relay = RelayState()
        session = RelaySession(
            self.client,
            self.urls,
            verb.relay,
            base_params=self.base_params,
            auth_token=self.auth_token,
            script=self.script,
            state=self.result.relay,
            heard=self.heard,
            event=self.event,
            think_time_s=self.think_time_s,
            hangup_at=self.hangup_at,
            reply_timeout_s=self.webhook_timeout_s,
            on_cycle=self.on_cycle,
            hold_phrase=self.hold_phrase,
        )
        record = await session.run()
        action = twiml.resolve(doc_url, verb.action) if verb.action else None
        if record.status == "completed":  # the caller hung up: the action is told, then done
            if action is not None:
                extra = action_params(record, "completed")
                webhook = await self.request(
                    "relay_action", action, verb.method, extra, time.monotonic(), "completed"
                )
                webhook.ended_call = True
                if self.on_webhook is not None:
                    self.on_webhook(webhook)
            if session.gave_up is not None:
                raise self.end("error", session.gave_up)
            raise self.end("caller_hung_up")
        if action is None:
            return None
        extra = action_params(record, "in-progress")
        return _Next("relay_action", action, verb.method, extra, time.monotonic())

    async def gather(self, verb: twiml.Gather, doc_url: str) -> _Next | None:
        for child in verb.children:
            await self.play(child)
        heard_at = time.monotonic()
        reply: Reply
        if self.hangup_at is not None and heard_at >= self.hangup_at:
            reply = HANG_UP
        else:
            reply = await self.script.next(tuple(self.heard))
        if reply is HANG_UP:
            raise self.end("caller_hung_up")
        keys = reply.digits if isinstance(reply, Dtmf) else None
        utterance: Utterance = reply.text if isinstance(reply, BargeIn) else None
        utterance = reply if isinstance(reply, str) else (keys or utterance)
        self.heard = []
        extra: dict[str, str] = {}
        if utterance is not None:
            self.event("caller_say", utterance)
            if keys is not None:
                # Keys at a speech-only Gather: Twilio hears nothing, as with silence.
                if "dtmf" in verb.input and (digits := gathered_digits(keys, verb)):
                    extra = {"Digits": digits}
            elif "speech" in verb.input:
                extra = {"SpeechResult": utterance, "Confidence": SPEECH_CONFIDENCE}
            elif _is_dtmf(utterance) and (digits := gathered_digits(utterance, verb)):
                extra = {"Digits": digits}
            # Speech at a dtmf-only Gather: Twilio hears nothing, as with silence.
        else:
            self.event("silence")
        # The caller stops talking think_time after the prompt (or whenever a live caller
        # finished typing); Twilio posts right then.
        scheduled_at = max(heard_at + self.think_time_s, time.monotonic())
        if not extra:
            if self.realtime:
                scheduled_at += verb.timeout_s
            self.silent_before_next = True
            if not verb.action_on_empty_result:
                await _sleep_until(scheduled_at)
                return None  # fall through to the verb after <Gather>
        return _Next(
            "gather", twiml.resolve(doc_url, verb.action), verb.method, extra, scheduled_at
        )


def _said(doc: twiml.Document) -> tuple[str, ...]:
    said: list[str] = []
    for verb in doc.verbs:
        children: Sequence[twiml.Verb]
        children = verb.children if isinstance(verb, twiml.Gather) else (verb,)
        said.extend(v.text for v in children if isinstance(v, twiml.Say))
    return tuple(said)


def _decode(body: bytes, charset: str | None) -> str:
    """The response's text: its declared charset, else (none, or unknown) UTF-8."""
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def gathered_digits(keys: str, verb: twiml.Gather) -> str:
    """The `Digits` Twilio posts for these keys: up to the finishOnKey (not included; "" = no
    finish key), at most numDigits of them. "" (the finish key first): no input."""
    if verb.finish_on_key:
        keys = keys.split(verb.finish_on_key, 1)[0]
    return keys[: verb.num_digits] if verb.num_digits is not None else keys


def _is_dtmf(text: str) -> bool:
    return bool(text) and all(c in "0123456789*#" for c in text)


async def _sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def place_call(
    client: aiohttp.ClientSession,
    voice_url: str,
    *,
    account_sid: str,
    auth_token: str,
    caller: Script | Sequence[Utterance] | ScriptFn,
    from_number: str = "+14155550100",
    to_number: str = "+14155550199",
    call_sid: str | None = None,
    status_url: str | None = None,
    signing_base: str | None = None,
    think_time_s: float = 0.0,
    start_at: float | None = None,
    hangup_at: float | None = None,
    max_webhooks: int = DEFAULT_MAX_WEBHOOKS,
    webhook_timeout_s: float = TWILIO_WEBHOOK_TIMEOUT_S,
    realtime: bool = False,
    on_event: Callable[[Event], None] | None = None,
    on_webhook: Callable[[WebhookRecord], None] | None = None,
    on_cycle: Callable[[TalkCycle], None] | None = None,
    hold_phrase: str | None = DEFAULT_HOLD_PHRASE,
    dial_outcomes: Mapping[str, str] | None = None,
    retry: WebhookRetry | None = None,
    direction: str = "inbound",
    answer_params: Mapping[str, str] | None = None,
    voice_method: str = "POST",
    fallback: tuple[str, str] | None = None,
) -> CallResult:
    """Place one inbound call to ``voice_url`` and follow its TwiML until someone hangs up.

    ``signing_base`` (e.g. ``https://voice.example.com``) is the public origin Twilio would use:
    requests go to ``voice_url`` but are signed as if sent to the public URL.
    ``start_at``/``hangup_at`` are ``time.monotonic()`` instants: when the call rings, and when
    the caller gives up at the next Gather. ``realtime`` waits out <Pause> and Gather timeouts.
    A ``<Connect><ConversationRelay>`` is followed too (callsim.relay); ``on_cycle`` hears of
    each of its talk cycles as it completes (or is interrupted). A relay reply ending in
    ``hold_phrase`` is not the answer: the caller waits on for the next one.
    ``dial_outcomes`` maps a number or SIP URI a ``<Dial>`` reaches to what the person there
    does (DIAL_OUTCOMES; anyone not listed answers). ``retry`` sends a webhook again as
    Twilio does when it got no answer in time (WebhookRetry).

    An outbound call (``direction`` "outbound-api": the callee has answered, callsim.callee)
    starts "in-progress" instead of "ringing"; ``answer_params`` (AnsweredBy) go with every
    webhook of the call, and ``voice_method`` is the REST request's Method. ``fallback`` (url,
    method) is the call's FallbackUrl: requested, with ErrorCode and ErrorUrl, when a webhook
    fails.
    """
    urls = UrlMap(voice_url, signing_base)
    base_params = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid or new_call_sid(),
        "Called": to_number,
        "Caller": from_number,
        "Direction": direction,
        "From": from_number,
        "To": to_number,
        **(answer_params or {}),
    }
    call = _Call(
        client,
        urls,
        caller if isinstance(caller, Script) else Script(caller),
        base_params,
        auth_token,
        think_time_s=think_time_s,
        hangup_at=hangup_at,
        max_webhooks=max_webhooks,
        webhook_timeout_s=webhook_timeout_s,
        realtime=realtime,
        on_event=on_event,
        on_webhook=on_webhook,
        on_cycle=on_cycle,
        hold_phrase=hold_phrase,
        dial_outcomes=dial_outcomes,
        retry=retry,
        fallback=(urls.to_public(fallback[0]), fallback[1]) if fallback else None,
    )
    started = time.monotonic() if start_at is None else start_at
    try:
        # Twilio's first webhook of an inbound call rings; an outbound one was answered.
        first_status = "ringing" if direction == "inbound" else "in-progress"
        await call.run(urls.to_public(voice_url), started, first_status, voice_method)
    except _CallEnded:
        pass
    finally:
        call.result.duration_s = max(0.0, time.monotonic() - started)
    if status_url is not None:
        await _status_callback(call, urls, voice_url, status_url)
    return call.result


async def _status_callback(call: _Call, urls: UrlMap, voice_url: str, status_url: str) -> None:
    """Twilio reports the end of every call, however it ended; its answer is ignored."""
    try:
        # A relative status URL is taken relative to the voice URL, like a TwiML URL.
        url = urls.to_public(twiml.resolve(voice_url, status_url))
    except ValueError as exc:  # off-site: callsim only talks to its target
        call.result.webhooks.append(
            WebhookRecord("status", status_url, "POST", {}, 0.0, error=str(exc))
        )
        return
    call.silent_before_next = False
    extra = {
        "CallDuration": str(round(call.result.duration_s)),
        "CallbackSource": "call-progress-events",
        "SequenceNumber": "0",
        "Timestamp": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
    }
    await call.request("status", url, "POST", extra, time.monotonic(), "completed")
