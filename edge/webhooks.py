"""Twilio's webhooks: the call comes in, the caller spoke (or was silent), the call ended.

Every webhook is checked before anything is written (size 413, type 415, fields 400, signature or
account 403). A turn goes onto the Redis stream and the webhook waits, up to the reply deadline,
for the worker's gRPC reply to this very process. Past the deadline the caller hears the hold
phrase inside a new Gather; the late reply is kept in Redis and spoken at the next webhook.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import parse_qsl

import falcon
import falcon.asgi
from redis.exceptions import RedisError

from edge import metrics
from edge.replies import ReplyWaiters
from edge.settings import EdgeSettings
from edge.signature import FormParams, TwilioAuth
from edge.turns import Submitted, TurnSubmitter
from edge.twiml import Twiml
from shared.pb import voicebridge_pb2 as pb

log = logging.getLogger("edge.webhooks")

TWIML_TYPE = "application/xml"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELD_CHARS = 4096
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
# CALL_END has its own idempotency mark, apart from the spoken turns' 0, 1, 2, ...
CALL_END_SEQ = 0xFFFFFFFF


class TwilioRequest:
    """A checked webhook: its form fields, and the call it belongs to."""

    __slots__ = ("params", "call_sid")

    def __init__(self, params: FormParams) -> None:
        self.params = params
        self.call_sid = params.get("CallSid")


class WebhookGuard:
    """Refuses bad webhooks with a clear HTTP error before anything touches Redis."""

    def __init__(self, settings: EdgeSettings, auth: TwilioAuth) -> None:
        self._max_body = settings.max_body_bytes
        self._auth = auth

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
                max_num_fields=200,
            )
        except (UnicodeDecodeError, ValueError):
            raise falcon.HTTPBadRequest(description="malformed form body") from None
        if any(len(v) > MAX_FIELD_CHARS or len(k) > 64 for k, v in pairs):
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
        if len(call_sid) > 64 or not (call_sid.isascii() and call_sid.isalnum()):
            raise falcon.HTTPBadRequest(description="malformed CallSid")
        return TwilioRequest(params)


def parse_small_int(value: str | None) -> int | None:
    """A plain ASCII number of at most 6 digits ('²'.isdigit() is True, but int() refuses it)."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 6:
        return None
    return int(value)


def _query_int(req: falcon.asgi.Request, name: str) -> int:
    value = parse_small_int(req.get_param(name))
    if value is None:
        raise falcon.HTTPBadRequest(description=f"missing or bad {name!r} query parameter")
    return value


class CallTurns:
    """The shared wait-for-the-bot logic behind the voice and gather webhooks."""

    def __init__(
        self,
        settings: EdgeSettings,
        submitter: TurnSubmitter,
        waiters: ReplyWaiters,
        twiml: Twiml,
        reply_to: str,
    ) -> None:
        self._s = settings
        self._submitter = submitter
        self._waiters = waiters
        self._twiml = twiml
        self._reply_to = reply_to
        self._deadline_s = settings.reply_deadline_ms / 1000

    async def take_turn(
        self,
        tw: TwilioRequest,
        kind: pb.TurnRequest.Kind,
        seq: int,
        text: str = "",
        confidence: float = 0.0,
    ) -> str:
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        turn_id = f"{tw.call_sid}:{seq}"
        turn = pb.TurnRequest(
            turn_id=turn_id,
            call_sid=tw.call_sid,
            seq=seq,
            kind=kind,
            text=text,
            confidence=confidence,
            from_number=tw.params.get("From"),
            to_number=tw.params.get("To"),
            reply_to=self._reply_to,
            deadline_unix_ms=now_ms + self._s.reply_deadline_ms,
            created_unix_ms=now_ms,
        )
        # Expect the reply before writing the turn: a fast worker may answer before XADD returns.
        fut = self._waiters.expect(turn_id)
        try:
            submitted = await self._submitter.submit(turn, tw.call_sid)
        except RedisError as exc:
            self._waiters.forget(turn_id)
            metrics.REDIS_ERRORS.inc()
            log.warning(
                "redis unavailable, turn not written",
                extra={"call_sid": tw.call_sid, "turn_id": turn_id, "error": str(exc)},
            )
            if seq == 0:
                # Nothing started yet: apologise and come back to the start of the call.
                return self._twiml.trouble_then_redirect(self._s.trouble_phrase, self._s.voice_url)
            # Same turn number again: nothing was written, so the caller's repeat is this turn.
            return self._twiml.speak_and_gather([self._s.trouble_phrase], seq)
        metrics.IN_FLIGHT.inc()
        try:
            reply = await self._await_reply(fut, turn_id, started)
        finally:
            metrics.IN_FLIGHT.dec()
        if reply is None:
            metrics.LATE.observe(time.monotonic() - started)
            metrics.DEADLINE_MISSES.inc()
            metrics.REPROMPT_LATE.inc()
        else:
            metrics.ANSWERED.observe(time.monotonic() - started)
        return self._render(submitted, reply, next_seq=seq + 1)

    async def _await_reply(
        self, fut: asyncio.Future[pb.TurnReply], turn_id: str, started: float
    ) -> pb.TurnReply | None:
        remaining = self._deadline_s - (time.monotonic() - started)
        try:
            return await asyncio.wait_for(fut, timeout=max(remaining, 0.0))
        except TimeoutError:
            return None
        except asyncio.CancelledError:
            # The waiter was released (shutdown): answer with the late-turn TwiML, unless this
            # request itself is being cancelled.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return None
        finally:
            self._waiters.forget(turn_id)

    def _render(self, submitted: Submitted, reply: pb.TurnReply | None, next_seq: int) -> str:
        sentences = [s for late in submitted.late for s in late.say]
        hang_up = any(late.hangup for late in submitted.late)
        hints: list[str] = []
        if reply is None:
            if not hang_up:
                sentences.append(self._s.hold_phrase)
        else:
            sentences.extend(reply.say)
            hang_up = hang_up or reply.hangup
            hints = [o.label for o in reply.options]
        if hang_up:
            return self._twiml.speak_and_hang_up(sentences)
        return self._twiml.speak_and_gather(sentences, next_seq, hints=hints)

    async def silence(self, tw: TwilioRequest, seq: int, silent: int) -> str:
        """No speech: no bot turn. Speak a late reply if one waits, else reprompt or say goodbye."""
        try:
            submitted = await self._submitter.submit(None, tw.call_sid)
        except RedisError:
            submitted = Submitted(False, [])
        if submitted.late:
            return self._render(submitted, pb.TurnReply(), next_seq=seq)
        silent += 1
        metrics.REPROMPT_SILENCE.inc()
        if silent >= self._s.max_silent_turns:
            return self._twiml.speak_and_hang_up([self._s.goodbye_phrase])
        return self._twiml.speak_and_gather([self._s.reprompt_phrase], seq, silent)


class TwilioVoiceResource:
    """POST /twilio/voice — "A call comes in": the one URL pasted into the Twilio console."""

    def __init__(self, guard: WebhookGuard, turns: CallTurns, twiml: Twiml, enabled: bool) -> None:
        self._guard, self._turns, self._twiml, self._enabled = guard, turns, twiml, enabled

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw = await self._guard.check(req)
        resp.content_type = TWIML_TYPE
        if not self._enabled:
            resp.text = self._twiml.unavailable()
            return
        resp.text = await self._turns.take_turn(tw, pb.TurnRequest.CALL_START, seq=0)


class TwilioGatherResource:
    """POST /twilio/gather?turn=N&silent=K — the Gather action: the caller spoke, or was silent."""

    def __init__(self, guard: WebhookGuard, turns: CallTurns) -> None:
        self._guard, self._turns = guard, turns

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw = await self._guard.check(req)
        seq = _query_int(req, "turn")
        silent = _query_int(req, "silent") if req.get_param("silent") is not None else 0
        if seq < 1:
            raise falcon.HTTPBadRequest(description="turn must be >= 1")
        resp.content_type = TWIML_TYPE
        speech = tw.params.get("SpeechResult").strip()
        if not speech:
            resp.text = await self._turns.silence(tw, seq, silent)
            return
        try:
            confidence = float(tw.params.get("Confidence") or 0.0)
        except ValueError:
            confidence = 0.0
        resp.text = await self._turns.take_turn(tw, pb.TurnRequest.SPEECH, seq, speech, confidence)


class TwilioStatusResource:
    """POST /twilio/status — the status callback: a final CallStatus ends the call."""

    def __init__(self, guard: WebhookGuard, submitter: TurnSubmitter) -> None:
        self._guard, self._submitter = guard, submitter

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw = await self._guard.check(req)
        status = tw.params.get("CallStatus")
        resp.status = falcon.HTTP_204
        if status not in FINAL_CALL_STATUSES:
            return
        turn = pb.TurnRequest(
            turn_id=f"{tw.call_sid}:end",
            call_sid=tw.call_sid,
            seq=CALL_END_SEQ,
            kind=pb.TurnRequest.CALL_END,
            from_number=tw.params.get("From"),
            to_number=tw.params.get("To"),
            call_status=status,
            created_unix_ms=int(time.time() * 1000),
        )
        try:
            await self._submitter.end_call(turn)
        except RedisError as exc:
            # Twilio retries nothing here; per-call state expires on its own TTL.
            log.warning(
                "redis unavailable, call end not recorded",
                extra={"call_sid": tw.call_sid, "error": str(exc)},
            )
