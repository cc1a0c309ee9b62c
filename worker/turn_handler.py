"""One turn, start to finish: order, the Botpress exchange, the reply, the call's state.

Turns of a call reach the bot one at a time, in order: a turn waits until the call's previous
turn is done (CallStore.wait_for_turn). The bot's reply is collected from the conversation's
listen stream, subscribed before our message is sent, then delivered over gRPC to the edge
process that waits; nobody waiting → it is kept as a late reply for the call's next webhook.
A relay turn (TurnRequest.stream) gets its reply part by part as the bot produces it
(worker/reply_stream.py), under the same end-of-turn rule.

What the bot receives: the caller's words (SPEECH) or keys (DTMF, `text` = the digits) as a
text message, with `metadata.voicebridge` = {kind: "speech" | "dtmf" | "call_start", turnId,
callSid, from, to, and confidence (speech) or digits (dtmf)}. When the caller cut the previous
reply off (relay mode), `voicebridge.interrupted` = {"heard": what they had heard of it,
"ms": after how long} tells the bot where its last answer stopped. A transfer the person did not
take (TRANSFER_FAILED) reaches the bot as an event, as the call's end does: {type:
"transfer_failed", target, dialCallStatus, callSid, turnId}; its reply is spoken and the call
goes on. The opening turn of a call we placed (POST /v1/calls) adds {direction: "outbound",
answeredBy, context} to the call_start marker (or event); a machine's (answeredBy machine_*) is
an event {type: "voicemail", ...the same fields}, whose reply is left as the message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from shared.callstore import CallState, CallStore
from shared.pb import voicebridge_pb2 as pb
from shared.routes import DEFAULT_ROUTE
from worker import metrics
from worker.botpress_client import (
    LISTEN_ENDED,
    BotMessage,
    BotpressClient,
    BotpressError,
    ConversationListener,
    StreamDelta,
    StreamEnded,
    UserMessage,
)
from worker.end_of_turn import TRAIL_OBSERVE_S, Gaps, QuietWindow, completes_turn, ends_call
from worker.identity import CallerIdentity
from worker.replies import ReplySender
from worker.reply_stream import ReplyStream
from worker.settings import WorkerSettings
from worker.speech import render_messages

log = logging.getLogger(__name__)

# A turn waits at most this long past the bot's time-out for its predecessor to finish.
ORDER_WAIT_MARGIN_S = 5.0
# Telling the bot that the call ended is best effort, bounded on its own.
CALL_END_EVENT_TIMEOUT_S = 5.0
# The conversation's last pages searched for our message when a turn is redelivered.
FIND_POSTED_PAGES = 3
# Past the edge's deadline by more than this (clock skew between hosts), nobody waits for the
# reply: it goes straight to the late replies without a gRPC call.
DEADLINE_SKEW_MS = 1000


@dataclass
class Collected:
    """A turn's bot messages so far, and how their collection ended."""

    messages: list[dict[str, Any]]
    dropped: bool = False  # the listen stream ended under us
    complete: bool = False  # a hangup or a question: nothing more was waited for
    gaps: Gaps = field(default_factory=Gaps)
    seen: set[Any] = field(default_factory=set)


@dataclass
class TurnOutcome:
    reply: pb.TurnReply | None  # None: nothing to send (a duplicate, or a call end)
    state: CallState
    stream: ReplyStream | None = None  # a relay turn: its parts so far; it sends the last


# Turns the caller takes, numbered in order: each waits for the one before.
_CALLER_TURNS = (pb.TurnRequest.SPEECH, pb.TurnRequest.DTMF, pb.TurnRequest.TRANSFER_FAILED)


def fallback_reply(turn: pb.TurnRequest, phrase: str) -> pb.TurnReply:
    """What the caller hears when the bot cannot answer this turn."""
    return pb.TurnReply(
        turn_id=turn.turn_id, call_sid=turn.call_sid, seq=turn.seq, say=[phrase], fallback=True
    )


def _normalise(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch == " ").strip()


class TurnHandler:
    def __init__(
        self,
        settings: WorkerSettings,
        store: CallStore,
        bot: BotpressClient,
        sender: ReplySender,
        window: QuietWindow,
        route: str = DEFAULT_ROUTE,
        bot_scope: str = "",
    ) -> None:
        # One handler per ROUTES_FILE route (worker/routing.py): `settings` and `bot` are the
        # route's; `bot_scope` keeps its callers' Botpress users apart from other bots'.
        self._settings = settings
        self._store = store
        self._bot = bot
        self._sender = sender
        self._window = window
        self._route = route
        self._identity = CallerIdentity(bot, store, bot_scope)
        self._observers: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Stop watching for trailing messages (shutdown): what was seen is kept."""
        for task in list(self._observers):
            task.cancel()
        if self._observers:
            await asyncio.wait(self._observers)

    async def run(
        self,
        entry_id: bytes | None,
        turn: pb.TurnRequest,
        redelivered: bool = False,
        snapshot: dict[bytes, bytes] | None = None,
    ) -> TurnOutcome:
        """The whole turn: the bot's reply delivered (or kept late), state saved, entry acked."""
        outcome = await self.handle(turn, redelivered, snapshot)
        reply, delivered = outcome.reply, True
        if reply is not None and outcome.stream is not None:
            reply, delivered = await outcome.stream.finish(reply)
        elif reply is not None:
            if outcome.state.has_late:
                reply = await self._store.take_late(reply)
            delivered = await self._deliver(turn, reply)
        await self._store.finish(
            turn, reply, outcome.state, delivered=delivered, ack_entry=entry_id
        )
        kind = pb.TurnRequest.Kind.Name(turn.kind)
        if reply is None:
            metrics.TURNS.labels(kind, "skipped", self._route).inc()
            return outcome
        metrics.TURNS.labels(kind, "fallback" if reply.fallback else "ok", self._route).inc()
        if not delivered:
            metrics.LATE_REPLIES.inc()
        if turn.created_unix_ms:
            metrics.TURN_SECONDS.observe(max(time.time() - turn.created_unix_ms / 1000, 0.0))
        return outcome

    async def give_up(self, entry_id: bytes | None, turn: pb.TurnRequest) -> None:
        """The turn cannot be answered (a bug, or too many deliveries): the caller hears the
        fallback phrase, and the turn is marked done so the call's next turns don't wait."""
        try:
            if turn.kind == pb.TurnRequest.CALL_END:
                await self._store.finish(turn, None, None, delivered=True, ack_entry=entry_id)
                return
            reply = fallback_reply(turn, self._settings.fallback_phrase)
            if turn.stream:  # a relay edge hears it as a reply of one part
                reply.part, reply.text = 1, self._settings.fallback_phrase
            delivered = await self._deliver(turn, reply)
            await self._store.finish(turn, reply, None, delivered=delivered, ack_entry=entry_id)
        except (RedisError, OSError) as exc:
            log.warning("could not finish a failed turn: %s", exc, extra={"turn_id": turn.turn_id})

    async def _deliver(self, turn: pb.TurnRequest, reply: pb.TurnReply) -> bool:
        if self._past_deadline(turn):
            return False  # the edge answered with its hold phrase long ago
        return await self._sender.deliver(turn.reply_to, reply)

    async def _deliver_part(self, turn: pb.TurnRequest, part: pb.TurnReply) -> pb.DeliverAck:
        # A relay edge sets the deadline to when it stops waiting altogether, so the same rule
        # holds: no part is skipped while it still waits.
        if self._past_deadline(turn):
            return pb.DeliverAck(accepted=False)
        return await self._sender.send(turn.reply_to, part)

    @staticmethod
    def _past_deadline(turn: pb.TurnRequest) -> bool:
        now_ms = time.time() * 1000
        return bool(turn.deadline_unix_ms) and now_ms > turn.deadline_unix_ms + DEADLINE_SKEW_MS

    async def handle(
        self,
        turn: pb.TurnRequest,
        redelivered: bool = False,
        snapshot: dict[bytes, bytes] | None = None,
    ) -> TurnOutcome:
        """The bot's reply to `turn` and the call's state after it (nothing written yet; a relay
        turn's parts went out already, all but the last: `TurnOutcome.stream` sends that)."""
        settings = self._settings
        # A reclaimed turn's snapshot is old: read the state afresh. Keys and a failed transfer
        # wait their turn like words do (CallStore orders SPEECH turns).
        ordered = turn
        if turn.kind in _CALLER_TURNS:
            ordered = pb.TurnRequest(
                kind=pb.TurnRequest.SPEECH, call_sid=turn.call_sid, seq=turn.seq
            )
        state = await self._store.wait_for_turn(
            ordered,
            None if redelivered else snapshot,
            settings.bot_timeout_s + ORDER_WAIT_MARGIN_S,
        )
        if turn.kind in _CALLER_TURNS and not state.ended and self._past_deadline(turn):
            # Nobody waits for this turn any more (it queued behind busy workers): the call
            # may have ended since its snapshot was taken, so look before asking the bot.
            state = await self._store.load(turn.call_sid)
        if turn.kind != pb.TurnRequest.CALL_END and state.ended:
            log.info(
                "call ended before this turn reached the bot; skipped",
                extra={"turn_id": turn.turn_id},
            )
            return TurnOutcome(None, state)
        if turn.kind in _CALLER_TURNS and state.done_seq < turn.seq - 1 and state.exists:
            log.warning(
                "previous turn never finished; going on",
                extra={"call_sid": turn.call_sid, "turn_id": turn.turn_id},
            )
        if turn.kind == pb.TurnRequest.CALL_END:
            await self._end_call(turn, state)
            return TurnOutcome(None, state)
        if turn.kind in _CALLER_TURNS and state.done_seq >= turn.seq:
            log.info("turn already done; skipped", extra={"turn_id": turn.turn_id})
            return TurnOutcome(None, state)
        deadline = time.monotonic() + settings.bot_timeout_s
        stream = None
        if turn.stream:
            stream = ReplyStream(turn, lambda part: self._deliver_part(turn, part))
            if state.has_late:  # said first, as gather's take_late does
                earlier = await self._store.take_late(self._empty_reply(turn))
                state.has_late = False
                await stream.earlier(list(earlier.say), earlier.hangup)
        try:
            messages = await self._exchange(turn, state, deadline, redelivered, stream)
        except BotpressError as exc:
            metrics.BOT_ERRORS.labels(exc.type).inc()
            log.warning(
                "botpress failed: %s",
                exc,
                extra={
                    "call_sid": turn.call_sid,
                    "turn_id": turn.turn_id,
                    "error": json.dumps(exc.body) if exc.body is not None else exc.type,
                },
            )
            return TurnOutcome(fallback_reply(turn, settings.fallback_phrase), state, stream)
        if stream is not None:
            await stream.settle(messages)
        speech = render_messages(messages, keypad=turn.keypad)
        if not messages and not (stream is not None and (stream.bot_spoke or stream.finished)):
            # The bot stayed silent for BOT_TIMEOUT_MS: say so rather than an empty prompt.
            metrics.BOT_ERRORS.labels("NoReply").inc()
            log.warning("bot did not answer in time", extra={"turn_id": turn.turn_id})
            return TurnOutcome(fallback_reply(turn, settings.fallback_phrase), state, stream)
        if not speech.sentences and not speech.ended:
            log.info("bot sent nothing speakable (media only)", extra={"turn_id": turn.turn_id})
        state.options = {_normalise(label): value for label, value in speech.options} or None
        reply = pb.TurnReply(
            turn_id=turn.turn_id,
            call_sid=turn.call_sid,
            seq=turn.seq,
            say=speech.sentences,
            hangup=speech.hangup,
            options=[pb.Option(label=label, value=value) for label, value in speech.options],
            transfer_to=speech.transfer_to,
            language=speech.language,
        )
        return TurnOutcome(reply, state, stream)

    @staticmethod
    def _empty_reply(turn: pb.TurnRequest) -> pb.TurnReply:
        return pb.TurnReply(turn_id=turn.turn_id, call_sid=turn.call_sid, seq=turn.seq)

    async def _exchange(
        self,
        turn: pb.TurnRequest,
        state: CallState,
        deadline: float,
        redelivered: bool,
        stream: ReplyStream | None = None,
    ) -> list[dict[str, Any]]:
        try:
            await self._identity.ensure(turn, state, deadline)
            return await self._send_and_collect(turn, state, deadline, redelivered, stream)
        except BotpressError as exc:
            if not exc.unauthorized:
                raise
            # A stale key (rotated secret, deleted user): one fresh key, one retry.
            await self._identity.ensure(turn, state, deadline, fresh_key=True)
            return await self._send_and_collect(turn, state, deadline, redelivered, stream)

    def _outgoing(
        self, turn: pb.TurnRequest, state: CallState
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        call = {"callSid": turn.call_sid, "from": turn.from_number, "to": turn.to_number}
        if turn.kind == pb.TurnRequest.CALL_START and turn.outbound:
            call.update(_outbound(turn))
            if _machine(turn):
                # An answering machine, after its beep: the bot's reply is left as the message.
                return {"type": "voicemail", "turnId": turn.turn_id, **call}, {}
        if turn.kind == pb.TurnRequest.CALL_START:
            marker = {"voicebridge": {"kind": "call_start", "turnId": turn.turn_id, **call}}
            if self._settings.opening_mode == "event":
                return {"type": "call_start", **call, **marker}, {}
            return {"type": "text", "text": self._settings.opening_text}, marker
        if turn.kind == pb.TurnRequest.TRANSFER_FAILED:
            event = {
                "type": "transfer_failed",
                "target": turn.text,
                "dialCallStatus": turn.call_status,
                "turnId": turn.turn_id,
                **call,
            }
            return event, {}
        meta: dict[str, Any] = {"turnId": turn.turn_id, **call}
        if turn.kind == pb.TurnRequest.DTMF:
            text = _keypad_choice(turn.digits, state.options)
            meta.update(kind="dtmf", digits=turn.digits)
        else:
            text = turn.text
            if state.options:
                text = state.options.get(_normalise(text), text)
            meta.update(kind="speech", confidence=round(turn.confidence, 3))
        if turn.heard or turn.heard_ms:
            meta["interrupted"] = {"heard": turn.heard, "ms": turn.heard_ms}
        return {"type": "text", "text": text}, {"voicebridge": meta}

    async def _send_and_collect(
        self,
        turn: pb.TurnRequest,
        state: CallState,
        deadline: float,
        redelivered: bool,
        stream: ReplyStream | None = None,
    ) -> list[dict[str, Any]]:
        payload, metadata = self._outgoing(turn, state)
        async with self._bot.listen(state.user_key, state.conversation, deadline) as listener:
            sent: dict[str, Any] | None = None
            earlier: list[dict[str, Any]] = []
            if redelivered:
                # Another worker died mid-turn: if our message reached Botpress, don't post it
                # again; pick up the bot's answer instead (exactly once toward the bot).
                sent, earlier = await self._find_posted(turn, state, deadline)
                if sent is not None:
                    log.info(
                        "turn had reached the bot; not posted again",
                        extra={"turn_id": turn.turn_id},
                    )
            if self._is_event(turn):
                # Events carry their data in the payload; the bot answers in reply.
                await self._bot.create_event(
                    state.user_key, state.conversation, payload, deadline=deadline
                )
            elif sent is None:
                sent = await self._bot.create_message(
                    state.user_key,
                    state.conversation,
                    payload,
                    metadata,
                    deadline,
                    landed=lambda: self._posted_message(turn, state, deadline),
                )
            since = str(sent.get("createdAt", "")) if sent else ""
            # A kept stream's leftovers: the previous turn's trailing messages, spoken first.
            leftover, listener.leftover = listener.leftover, []
            if stream is not None:
                for message in leftover:
                    await stream.message(message)
            got = await self._collect(listener, deadline, earlier, since, stream)
            own = str(sent.get("id", "")) if sent else ""
            ended = any(ends_call(m) for m in got.messages) or bool(
                stream and (stream.hangup or stream.transfer_to)
            )
            if stream is not None and stream.stopped:
                # The caller cut in: the rest of this reply is wanted neither now nor late, nor
                # by the call's next turn on a kept stream.
                await listener.close()
            elif got.messages and not got.dropped and not ended and not self._bot.keeps_streams:
                # The bot may say more after the reply went out: watch a little longer, off
                # the turn's slot, so nothing is lost and the window learns the gap. (A kept
                # stream holds them for the call's next turn instead.)
                listener.handed_off = True
                observer = asyncio.create_task(
                    self._observe_trailing(turn, state.conversation, listener, got, since, own)
                )
                self._observers.add(observer)
                observer.add_done_callback(self._observers.discard)
            elif own:
                self._window.record(got.gaps.largest_s)
        messages = leftover + got.messages
        if got.dropped and not got.messages:
            # The listen stream dropped: fall back to the conversation's message list.
            _, listed = await self._find_posted(turn, state, deadline)
            messages = leftover + listed
        messages.sort(key=lambda m: str(m.get("createdAt", "")))
        return messages

    def _is_event(self, turn: pb.TurnRequest) -> bool:
        if turn.kind == pb.TurnRequest.TRANSFER_FAILED or _machine(turn):
            return True
        return turn.kind == pb.TurnRequest.CALL_START and self._settings.opening_mode == "event"

    async def _posted_message(
        self, turn: pb.TurnRequest, state: CallState, deadline: float
    ) -> dict[str, Any] | None:
        log.info(
            "posting the turn failed; checking it did not land", extra={"turn_id": turn.turn_id}
        )
        found, _ = await self._find_posted(turn, state, deadline)
        return found

    async def _find_posted(
        self, turn: pb.TurnRequest, state: CallState, deadline: float
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Our message for this turn if Botpress has it (by metadata turnId), and the bot's
        messages after it, oldest first."""
        listed = await self._bot.list_messages(
            state.user_key, state.conversation, deadline, pages=FIND_POSTED_PAGES
        )
        listed.sort(key=lambda m: str(m.get("createdAt", "")))
        for index, message in enumerate(listed):
            meta = (message.get("metadata") or {}).get("voicebridge") or {}
            if meta.get("turnId") == turn.turn_id:
                ours = message.get("userId")
                return message, [m for m in listed[index + 1 :] if m.get("userId") != ours]
        return None, []

    async def _collect(
        self,
        listener: ConversationListener,
        deadline: float,
        earlier: list[dict[str, Any]] | None = None,
        since: str = "",
        stream: ReplyStream | None = None,
    ) -> Collected:
        """Bot messages until the end-of-turn rule (worker/end_of_turn.py) says the reply is
        complete: a hangup, a question or choice, the quiet window after the latest message (a
        streamed message in progress is not quiet), or the bot's time-out.

        `stream` (a relay turn) is given each message and delta as it arrives; a marker in the
        deltas ends the reply too, and so does the caller cutting in."""
        got = Collected(list(earlier or []))
        got.seen = {m.get("id") for m in got.messages}
        if stream is not None:
            for message in got.messages:
                await stream.message(message)
        if any(completes_turn(m) for m in got.messages):
            got.complete = True
            return got
        streaming: set[str] = set()
        while True:
            left = deadline - time.monotonic()
            # A relay turn has spoken once a stream's deltas went out, even if it was aborted.
            spoke = got.messages or (stream is not None and stream.bot_spoke)
            quiet = spoke and not streaming
            wait = min(self._window.seconds, left) if quiet else left
            if wait <= 0:
                return got
            try:
                signal = await listener.next(wait)
            except TimeoutError:
                return got
            if signal is LISTEN_ENDED:
                got.dropped = True
                return got
            if isinstance(signal, StreamDelta):
                streaming.add(signal.stream_id)
                if stream is not None and signal.text:
                    await stream.delta(signal.stream_id, signal.text)
                    if stream.finished:
                        got.complete = True
                        return got
                continue
            if isinstance(signal, StreamEnded):
                streaming.discard(signal.stream_id)
                if stream is not None and signal.aborted:
                    stream.abort(signal.stream_id)
                continue
            if not self._is_new(signal, got, since):
                continue
            assert isinstance(signal, BotMessage)
            got.messages.append(signal.message)
            ends = completes_turn(signal.message)
            if stream is not None:
                # The turn ends here when the rule says so or no quiet window is waited for
                # (a learned window of 0): this message is then the final part (one Deliver).
                last = ends or (not streaming and self._window.seconds <= 0)
                await stream.message(signal.message, last=last)
                if stream.finished:
                    got.complete = True
                    return got
            if ends:
                got.complete = True
                return got

    @staticmethod
    def _is_new(signal: object, got: Collected, since: str) -> bool:
        """A bot message of this turn not seen yet (marks it seen)."""
        if not isinstance(signal, BotMessage):
            return False
        data = signal.message
        if data.get("id") in got.seen:
            return False  # one we already have (a completed stream's final message_created)
        if since and str(data.get("createdAt", "")) < since:
            return False  # said before our message: left from an earlier turn on a kept stream
        got.seen.add(data.get("id"))
        got.gaps.message()
        return True

    @staticmethod
    def _starts_next_turn(signal: UserMessage, since: str, own: str) -> bool:
        data = signal.message
        if own and str(data.get("id", "")) == own:
            return False  # the echo of this turn's own message
        return not since or str(data.get("createdAt", "")) >= since

    async def _observe_trailing(
        self,
        turn: pb.TurnRequest,
        conversation: str,
        listener: ConversationListener,
        got: Collected,
        since: str,
        own: str,
    ) -> None:
        """After the reply: bot messages within TRAIL_OBSERVE_S of the last one are this
        turn's too, until the call's next message from the caller side (whoever posts it: the
        bot's messages after that belong to the next turn). They become a late reply (the call's
        next webhook speaks it) and their gap teaches the quiet window."""
        trailing: list[dict[str, Any]] = []
        last = time.monotonic()
        try:
            while not (trailing and ends_call(trailing[-1])):
                left = last + TRAIL_OBSERVE_S - time.monotonic()
                if left <= 0:
                    break
                try:
                    signal = await listener.next(left)
                except TimeoutError:
                    break
                if signal is LISTEN_ENDED:
                    break
                if isinstance(signal, UserMessage) and self._starts_next_turn(signal, since, own):
                    break
                if self._is_new(signal, got, since):
                    assert isinstance(signal, BotMessage)
                    trailing.append(signal.message)
                    last = time.monotonic()
        finally:
            await self._bot.release(conversation, listener, reusable=not listener.closed)
            if own:  # a turn we posted ourselves (a redelivered one's timing says nothing)
                self._window.record(got.gaps.largest_s)
            if trailing:
                await self._keep_trailing(turn, trailing)

    async def _keep_trailing(self, turn: pb.TurnRequest, trailing: list[dict[str, Any]]) -> None:
        metrics.TRAILING_MESSAGES.inc(len(trailing))
        speech = render_messages(trailing)
        reply = pb.TurnReply(
            turn_id=turn.turn_id,
            call_sid=turn.call_sid,
            seq=turn.seq,
            say=speech.sentences,
            hangup=speech.hangup,
            transfer_to=speech.transfer_to,
            language=speech.language,
        )
        if turn.stream:  # a relay session speaks `text`
            reply.text = " ".join(speech.sentences)
        log.info(
            "bot spoke after its reply went out; kept for the next webhook",
            extra={"turn_id": turn.turn_id},
        )
        try:
            await self._store.keep_late(reply)
        except (RedisError, OSError) as exc:
            log.warning("trailing bot message lost: %s", exc, extra={"turn_id": turn.turn_id})

    async def _end_call(self, turn: pb.TurnRequest, state: CallState) -> None:
        if state.conversation:
            await self._bot.forget_listener(state.conversation)
        if state.user_key and state.conversation:
            try:
                await self._bot.create_event(
                    state.user_key,
                    state.conversation,
                    {
                        "type": "call_ended",
                        "callSid": turn.call_sid,
                        "callStatus": turn.call_status,
                    },
                    deadline=time.monotonic() + CALL_END_EVENT_TIMEOUT_S,
                )
            except BotpressError as exc:
                log.info(
                    "could not tell the bot the call ended: %s",
                    exc,
                    extra={"call_sid": turn.call_sid},
                )
        await self._store.end(turn.call_sid, known=state.exists)


def _machine(turn: pb.TurnRequest) -> bool:
    return turn.outbound and turn.answered_by.startswith("machine_")


def _outbound(turn: pb.TurnRequest) -> dict[str, Any]:
    """What the opening turn of a call we placed (POST /v1/calls) tells the bot."""
    try:
        context = json.loads(turn.context_json or "{}")
    except ValueError:
        context = {}
    return {"direction": "outbound", "answeredBy": turn.answered_by, "context": context}


def _keypad_choice(digits: str, options: dict[str, str] | None) -> str:
    """Keys for the bot: an option's label as typed, or "1".."9" picking the last reply's
    options in the order they were read out; else the digits themselves."""
    if not options:
        return digits
    if _normalise(digits) in options:
        return options[_normalise(digits)]
    values = list(options.values())
    if len(digits) == 1 and digits in "123456789" and int(digits) <= len(values):
        return values[int(digits) - 1]
    return digits
