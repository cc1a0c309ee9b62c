"""The edge's side of a turn: write it, wait for its reply up to the deadline, render TwiML.

A turn goes onto the Redis stream (CallStore.submit) and the webhook waits, up to
REPLY_DEADLINE_MS, for the worker's gRPC reply to this very process. Past the deadline the
caller hears the hold phrase inside a new Gather; the late reply is kept in Redis and spoken at
the next webhook, before anything else (shared.callstore.merge_replies).

Relay mode (edge/relay_session.py) writes its turns through the same submit
(`submit_streamed`), with a sink that takes every part of the reply instead of one future.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import RedisError

from edge import metrics
from edge.guard import TwilioRequest
from edge.replies import ReplySink, ReplyWaiters, Superseded
from edge.settings import MS_PER_S, EdgeSettings
from edge.twiml import Twiml
from shared.callstore import POLL_STEPS_S, CallStore, merge_replies, poll_until
from shared.pb import voicebridge_pb2 as pb

if TYPE_CHECKING:
    from edge.outbound import Opening
from shared.routes import DEFAULT_ROUTE

log = logging.getLogger(__name__)

# CALL_END has its own idempotency mark, apart from the spoken turns' 0, 1, 2, ...
CALL_END_SEQ = 0xFFFFFFFF


class ReplyAddress(Protocol):
    """Where workers send this process's replies (known once its gRPC server is bound)."""

    reply_to: str


class CallTurns:
    """The wait-for-the-bot logic behind the voice and gather webhooks, and the call's end."""

    def __init__(
        self,
        settings: EdgeSettings,
        store: CallStore,
        waiters: ReplyWaiters,
        twiml: Twiml,
        address: ReplyAddress,
        route: str = DEFAULT_ROUTE,
    ) -> None:
        self._settings = settings
        self._route = route  # the ROUTES_FILE route these settings are (TurnRequest.route)
        self._store = store
        self._waiters = waiters
        self._twiml = twiml
        self._address = address
        self._deadline_ms = int(settings.reply_deadline_s * MS_PER_S)

    def new_turn(
        self,
        call_sid: str,
        kind: pb.TurnRequest.Kind,
        seq: int,
        *,
        from_number: str = "",
        to_number: str = "",
        wait_s: float | None = None,
        **fields: str | float | bool | int,
    ) -> pb.TurnRequest:
        """A turn of `call_sid` that this process waits for `wait_s` (default: the deadline)."""
        now_ms = int(time.time() * MS_PER_S)
        wait_ms = self._deadline_ms if wait_s is None else int(wait_s * MS_PER_S)
        return pb.TurnRequest(
            turn_id=f"{call_sid}:{seq}",
            call_sid=call_sid,
            seq=seq,
            kind=kind,
            from_number=from_number,
            to_number=to_number,
            reply_to=self._address.reply_to,
            deadline_unix_ms=now_ms + wait_ms,
            created_unix_ms=now_ms,
            keypad=self._settings.keypad,  # the worker reads options with their keys
            route=self._route,
            **fields,  # type: ignore[arg-type]
        )

    async def take_turn(
        self,
        tw: TwilioRequest,
        kind: pb.TurnRequest.Kind,
        seq: int,
        text: str = "",
        confidence: float = 0.0,
        digits: str = "",
        call_status: str = "",
        opening: Opening | None = None,
    ) -> str:
        """`opening`: an outbound call's first turn (edge/outbound.py); a machine's is spoken
        once and the call ends."""
        started = time.monotonic()
        turn = self.new_turn(
            tw.call_sid,
            kind,
            seq,
            from_number=tw.params.get("From"),
            to_number=tw.params.get("To"),
            text=text,
            confidence=confidence,
            digits=digits,
            call_status=call_status,
        )
        if opening is not None:
            opening.apply(turn)
        turn_id = turn.turn_id
        attempt = f"{self._address.reply_to}/{secrets.token_hex(6)}"
        # Expect the reply before writing the turn: a fast worker may answer before XADD returns.
        fut = self._waiters.expect(turn_id)
        try:
            submitted = await self._store.submit_attempt(turn, tw.call_sid, attempt)
        except RedisError as exc:
            self._waiters.forget(turn_id, fut)
            metrics.REDIS_ERRORS.inc()
            log.warning(
                "redis unavailable, turn not written",
                extra={"call_sid": tw.call_sid, "turn_id": turn_id, "error": str(exc)},
            )
            phrase = self._settings.trouble_phrase
            if seq == 0:
                # Nothing started yet: apologise and come back to the start of the call.
                return self._twiml.trouble_then_redirect(phrase, self._settings.voice_url)
            # Same turn number again: nothing was written, so the caller's repeat is this turn.
            return self._twiml.speak_and_gather([phrase], seq)
        late = submitted.late
        # The call's language is read while the bot thinks (only VOICES lets a bot switch it).
        current = asyncio.ensure_future(self.current_language(tw.call_sid))
        metrics.IN_FLIGHT.inc()
        try:
            wait_s = self._settings.reply_deadline_s
            if opening is not None and opening.machine:
                wait_s = min(wait_s, self._settings.outbound.voicemail_wait_s)
            if submitted.retry and submitted.answer:
                # An earlier attempt answered, after Twilio had given up on it: the same answer.
                log.info("webhook retried, answered again", extra={"turn_id": turn_id})
                self._waiters.forget(turn_id, fut)
                reply, before = _split_own(submitted.answer, turn_id)
                late = before + late
            elif submitted.retry:
                log.info("webhook retried", extra={"call_sid": tw.call_sid, "turn_id": turn_id})
                reply, late = await self._await_retry(fut, turn, late, started, wait_s)
            else:
                reply = await self._await_reply(fut, turn_id, started, wait_s)
            superseded = not await self._still_current(tw.call_sid, seq, attempt, late, reply)
        except Superseded:
            # A retry of this turn waits in this process: what this attempt took is its.
            await self._give_back(tw.call_sid, late)
            superseded = True
        finally:
            metrics.IN_FLIGHT.dec()
        if superseded:
            # A retry took over: Twilio listens to it, not to this attempt.
            current.cancel()
            return self._render([], None, next_seq=seq + 1, call_sid=tw.call_sid)
        if reply is None:
            metrics.LATE.observe(time.monotonic() - started)
            metrics.DEADLINE_MISSES.inc()
            metrics.REPROMPT_LATE.inc()
        else:
            metrics.ANSWERED.observe(time.monotonic() - started)
        requested = merge_replies(late, reply).language
        language = await self.switch_language(tw.call_sid, await current, requested)
        if opening is not None and opening.machine:
            return self._voicemail(late, reply, language)
        return self._render(late, reply, seq + 1, tw.call_sid, language=language)

    def _voicemail(
        self, late: list[pb.TurnReply], reply: pb.TurnReply | None, language: str
    ) -> str:
        """An answering machine, after its beep: the bot's reply to `voicemail` (or
        VOICEMAIL_MESSAGE when it gave none in time, or only the fallback), then hang up. No
        Gather: there is nobody to talk with."""
        merged = merge_replies(late, reply)
        said = [] if reply is None or reply.fallback else list(merged.say)
        return self._twiml.in_language(language).speak_and_hang_up(
            said or [self._settings.outbound.voicemail_message]
        )

    async def _await_reply(
        self, fut: asyncio.Future[pb.TurnReply], turn_id: str, started: float, wait_s: float
    ) -> pb.TurnReply | None:
        remaining = wait_s - (time.monotonic() - started)
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
            self._waiters.forget(turn_id, fut)

    async def _await_retry(
        self,
        fut: asyncio.Future[pb.TurnReply],
        turn: pb.TurnRequest,
        late: list[pb.TurnReply],
        started: float,
        wait_s: float,
    ) -> tuple[pb.TurnReply | None, list[pb.TurnReply]]:
        """A retried webhook: the reply comes over gRPC when the turn names this process and
        no earlier attempt here took it; else the attempt that got it handed it back as late
        (or the worker kept it late): watch the call's late list too, up to the deadline."""
        give_up = started + wait_s
        polls = 0
        try:
            own, late = _split_own(late, turn.turn_id)  # kept late before the retry came
            while own is None:
                try:
                    step = POLL_STEPS_S[min(polls, len(POLL_STEPS_S) - 1)]
                    remaining = give_up - time.monotonic()
                    reply = await asyncio.wait_for(
                        asyncio.shield(fut), timeout=max(min(step, remaining), 0.0)
                    )
                    # An earlier attempt here may have handed back what it took meanwhile.
                    return reply, late + await self.take_late(turn.call_sid)
                except TimeoutError:
                    pass
                polls += 1
                if await self._store.has_late(turn.call_sid):
                    own, others = _split_own(
                        await self._store.submit(None, turn.call_sid), turn.turn_id
                    )
                    late = late + others
                if own is None and time.monotonic() >= give_up:
                    return None, late
            return own, late
        except RedisError:
            return None, late
        finally:
            self._waiters.forget(turn.turn_id, fut)

    async def _still_current(
        self,
        call_sid: str,
        seq: int,
        attempt: str,
        late: list[pb.TurnReply],
        reply: pb.TurnReply | None,
    ) -> bool:
        """False when a retry of this turn came to another process while this attempt waited:
        what it took goes back to the late list, in order, for the retry to speak."""
        taken = [*late, *([reply] if reply is not None else [])]
        if not taken:
            return True
        try:
            if await self._store.keep_answer(call_sid, seq, attempt, taken):
                return True
        except RedisError:
            return True
        await self._give_back(call_sid, taken)
        return False

    async def _give_back(self, call_sid: str, replies: list[pb.TurnReply]) -> None:
        try:
            await self._store.give_back(call_sid, replies)
        except RedisError as exc:
            log.warning(
                "redis unavailable, replies of a superseded attempt lost",
                extra={"call_sid": call_sid, "error": str(exc)},
            )

    def _render(
        self,
        late: list[pb.TurnReply],
        reply: pb.TurnReply | None,
        next_seq: int,
        call_sid: str,
        language: str = "",
        pending: bool = False,
    ) -> str:
        """The TwiML of a turn's replies; `reply` None (late) or `pending` (a later turn of the
        call is not answered yet): the hold loop follows, which speaks it once kept."""
        twiml = self._twiml.in_language(language)
        merged = merge_replies(late, reply)
        sentences = list(merged.say)
        if reply is None and not merged.hangup and not merged.transfer_to:
            sentences.append(self._settings.hold_phrase)
        if merged.hangup:
            return twiml.speak_and_hang_up(sentences)
        if merged.transfer_to:
            name = merged.transfer_to
            target = self.transfer_target(call_sid, name)
            if target is not None:
                # The Dial's action comes back as the next turn if the person does not answer.
                query = {"turn": next_seq, "to": name.strip().lower()}
                return twiml.speak_and_dial(sentences, target, query)
            sentences.append(self._settings.transfer_refused_phrase)
        hints = [o.label for o in merged.options]
        # Late: the hold loop speaks the reply as soon as it comes (POST /twilio/wait).
        hold_loop = 1 if reply is None or pending else None
        return twiml.speak_and_gather(sentences, next_seq, hints=hints, hold_loop=hold_loop)

    async def hold(self, tw: TwilioRequest, seq: int, loop: int) -> str:
        """/twilio/wait, loop `loop` of a late turn's hold: the call's late reply as soon as it
        is kept (within HOLD_WAIT_MS), else another short listen-and-wait; after
        hold_max_loops, the usual silence handling (the worker's fallback comes well before)."""
        try:
            late = await self._store.wait_late(tw.call_sid, self._settings.hold_wait_s)
        except RedisError:
            late = []
        current = await self.current_language(tw.call_sid)
        if late:
            requested = merge_replies(late, None).language
            language = await self.switch_language(tw.call_sid, current, requested)
            pending = _answers_before(late, seq)
            return self._render(
                late, pb.TurnReply(), seq, tw.call_sid, language=language, pending=pending
            )
        if loop >= self._settings.hold_max_loops:
            return await self.silence(tw, seq, 0)
        return self._twiml.in_language(current).speak_and_gather([], seq, hold_loop=loop + 1)

    def transfer_target(self, call_sid: str, name: str) -> str | None:
        """What a bot's <transfer to="NAME"/> dials: only a target the operator listed. Bot text
        can repeat a caller's words, so anything else (a raw number too) dials nothing."""
        target = self._settings.transfer_target(name)
        if target is None:
            metrics.TRANSFERS.labels("refused").inc()
            log.warning(
                "transfer refused: %r is not in TRANSFER_TARGETS",
                name[:80],
                extra={"call_sid": call_sid},
            )
        else:
            metrics.TRANSFERS.labels("dialled").inc()
            log.info("transfer to %s", name, extra={"call_sid": call_sid})
        return target

    async def current_language(self, call_sid: str) -> str:
        """The call's language ("" = LANGUAGE): read only when VOICES lets a bot switch it."""
        if not self._settings.voices:
            return ""
        try:
            return await self._store.language(call_sid)
        except RedisError:
            return ""

    async def switch_language(self, call_sid: str, current: str, requested: str) -> str:
        """The call's language from here on: a bot's <language code/> (`requested`) when VOICES
        gives it a voice, else `current`, kept. Bot text can repeat a caller's words, so only
        the operator's list is ever switched to."""
        if not requested or requested == (current or self._settings.language):
            return current
        extra = {"call_sid": call_sid}
        if self._settings.voice_for(requested) is None:
            log.warning("language refused: no voice in VOICES for %r", requested, extra=extra)
            return current
        try:
            await self._store.set_language(call_sid, requested)
        except RedisError as exc:
            # This answer still switches; later turns may not know it.
            log.warning("redis unavailable, language not stored: %s", exc, extra=extra)
        log.info("language switched to %s", requested, extra=extra)
        return requested

    async def submit_streamed(self, turn: pb.TurnRequest, sink: ReplySink) -> list[pb.TurnReply]:
        """Relay mode: write `turn` with every part of its reply going to `sink`, through the
        same idempotent submit as the webhooks; returns the call's late replies. A RedisError
        leaves nothing registered and is the caller's to handle."""
        # The sink before the write, as the future above: a fast worker may answer first.
        self._waiters.stream_to(turn.turn_id, sink)
        try:
            return await self._store.submit(turn, turn.call_sid)
        except RedisError as exc:
            self._waiters.forget(turn.turn_id)
            metrics.REDIS_ERRORS.inc()
            log.warning(
                "redis unavailable, turn not written",
                extra={"call_sid": turn.call_sid, "turn_id": turn.turn_id, "error": str(exc)},
            )
            raise

    def forget(self, turn_id: str) -> None:
        self._waiters.forget(turn_id)

    async def take_late(self, call_sid: str) -> list[pb.TurnReply]:
        """The call's late replies (taken: said once); none when Redis fails."""
        try:
            return await self._store.submit(None, call_sid)
        except RedisError:
            return []

    async def next_seq(self, call_sid: str) -> int:
        return await self._store.next_seq(call_sid)

    async def late_of_takeover(
        self, call_sid: str, next_seq: int, timeout_s: float, still: Callable[[], bool]
    ) -> list[pb.TurnReply]:
        """A relay session taking a call over: the replies kept late for it, waiting (up to
        timeout_s, while still()) for a turn a worker was answering when the old process died,
        whose reply is kept late once its Deliver fails. [] on a Redis error."""
        try:
            state = await poll_until(
                lambda: self._store.load(call_sid),
                lambda s: s.has_late or s.done_seq >= next_seq - 1 or not s.exists or not still(),
                timeout_s,
            )
            if state.has_late and still():
                return await self._store.submit(None, call_sid)
        except RedisError:
            pass
        return []

    async def silence(self, tw: TwilioRequest, seq: int, silent: int) -> str:
        """No speech: no bot turn. Speak a late reply if one waits, else reprompt or say goodbye."""
        try:
            late = await self._store.submit(None, tw.call_sid)
        except RedisError:
            late = []
        requested = merge_replies(late, None).language
        current = await self.current_language(tw.call_sid)
        language = await self.switch_language(tw.call_sid, current, requested)
        if late:
            return self._render(late, pb.TurnReply(), seq, tw.call_sid, language=language)
        silent += 1
        metrics.REPROMPT_SILENCE.inc()
        twiml = self._twiml.in_language(language)
        if silent >= self._settings.max_silent_turns:
            return twiml.speak_and_hang_up([self._settings.goodbye_phrase])
        return twiml.speak_and_gather([self._settings.reprompt_phrase], seq, silent)

    async def end_call(self, tw: TwilioRequest, status: str) -> None:
        """A final CallStatus: tell the workers (the bot is told, the state freed). CALL_END goes
        through the same idempotent path as turns: status callbacks are retried too."""
        turn = pb.TurnRequest(
            turn_id=f"{tw.call_sid}:end",
            call_sid=tw.call_sid,
            seq=CALL_END_SEQ,
            kind=pb.TurnRequest.CALL_END,
            from_number=tw.params.get("From"),
            to_number=tw.params.get("To"),
            call_status=status,
            created_unix_ms=int(time.time() * MS_PER_S),
            route=self._route,
        )
        try:
            await self._store.submit(turn, tw.call_sid)
        except RedisError as exc:
            # Twilio retries nothing here; per-call state expires on its own TTL.
            log.warning(
                "redis unavailable, call end not recorded",
                extra={"call_sid": tw.call_sid, "error": str(exc)},
            )


def _answers_before(late: list[pb.TurnReply], next_seq: int) -> bool:
    """True when the late replies answer only turns before the call's last one (next_seq - 1):
    that one is still with the bot, so the hold loop goes on after speaking them."""
    return max(r.seq for r in late) < next_seq - 1


def _split_own(
    replies: list[pb.TurnReply], turn_id: str
) -> tuple[pb.TurnReply | None, list[pb.TurnReply]]:
    """A retry's own reply among late replies (the first one for its turn), and the others."""
    own = next((r for r in replies if r.turn_id == turn_id), None)
    return own, [r for r in replies if r is not own]
