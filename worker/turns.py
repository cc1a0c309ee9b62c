"""One turn, start to finish: call state, order, the Botpress exchange, the reply.

Turns of a call reach the bot one at a time, in order: a turn waits until the call's previous
turn is done (the `done` field of the call's hash). The bot's reply is collected from the
conversation's listen stream, subscribed before our message is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from shared import keys
from shared.pb import voicebridge_pb2 as pb
from worker import metrics
from worker.botpress_client import BotpressClient, BotpressError, ConversationListener
from worker.identity import caller_user_id, conversation_id
from worker.settings import WorkerSettings
from worker.speech import HANGUP_MARKER, render_messages

log = logging.getLogger("worker.turns")

# The previous turn usually finishes within a Redis round trip of ours starting: poll tightly.
ORDER_POLL_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


@dataclass
class CallState:
    user_id: str = ""
    user_key: str = ""
    conversation: str = ""
    done_seq: int = -1
    has_late: bool = False
    options: dict[str, str] | None = None

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> CallState:
        def text(field: str) -> str:
            return raw.get(field.encode(), b"").decode()

        done = text(keys.F_DONE_SEQ)
        opts = text(keys.F_OPTIONS)
        return cls(
            user_id=text(keys.F_USER_ID),
            user_key=text(keys.F_USER_KEY),
            conversation=text(keys.F_CONVERSATION),
            done_seq=int(done) if done.lstrip("-").isdigit() else -1,
            has_late=bool(raw.get(keys.F_HAS_LATE.encode())),
            options=json.loads(opts) if opts else None,
        )


@dataclass
class TurnOutcome:
    reply: pb.TurnReply | None  # None: nothing to send (a duplicate, or a call end)
    state: CallState


def _has_hangup(message: dict[str, Any]) -> bool:
    payload = message.get("payload") or {}
    return any(HANGUP_MARKER.search(v) for v in payload.values() if isinstance(v, str))


def _normalise(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch == " ").strip()


class TurnHandler:
    def __init__(self, settings: WorkerSettings, redis: Redis, bot: BotpressClient) -> None:
        self._s = settings
        self._redis = redis
        self._bot = bot
        self._quiet_s = settings.bot_quiet_ms / 1000
        self._bot_timeout_s = settings.bot_timeout_ms / 1000

    async def load_state(
        self, turn: pb.TurnRequest, snapshot: dict[bytes, bytes] | None = None
    ) -> CallState:
        """The call's state; for a spoken turn, wait (bounded) until the previous turn is done.

        `snapshot` is the hash as the edge saw it when it wrote the turn: when it already shows
        the previous turn done, nothing can have changed it since, so no read is needed."""
        if snapshot is not None:
            state = CallState.from_hash(snapshot)
            if turn.kind != pb.TurnRequest.SPEECH or state.done_seq >= turn.seq - 1:
                return state
        key = keys.call_state(turn.call_sid)
        state = CallState.from_hash(cast(dict[bytes, bytes], await self._redis.hgetall(key)))
        if turn.kind != pb.TurnRequest.SPEECH:
            return state
        give_up = time.monotonic() + self._bot_timeout_s + 5
        polls = 0
        while state.done_seq < turn.seq - 1 and time.monotonic() < give_up:
            await asyncio.sleep(ORDER_POLL_S[min(polls, len(ORDER_POLL_S) - 1)])
            polls += 1
            state = CallState.from_hash(cast(dict[bytes, bytes], await self._redis.hgetall(key)))
        if state.done_seq < turn.seq - 1:
            log.warning(
                "previous turn never finished; going on",
                extra={"call_sid": turn.call_sid, "turn_id": turn.turn_id},
            )
        return state

    async def handle(
        self,
        turn: pb.TurnRequest,
        redelivered: bool = False,
        snapshot: dict[bytes, bytes] | None = None,
    ) -> TurnOutcome:
        # A reclaimed turn's snapshot is old: read the state afresh.
        state = await self.load_state(turn, None if redelivered else snapshot)
        if turn.kind == pb.TurnRequest.CALL_END:
            await self._end_call(turn, state)
            return TurnOutcome(None, state)
        if turn.kind == pb.TurnRequest.SPEECH and state.done_seq >= turn.seq:
            log.info("turn already done; skipped", extra={"turn_id": turn.turn_id})
            return TurnOutcome(None, state)
        deadline = time.monotonic() + self._bot_timeout_s
        try:
            messages = await self._exchange(turn, state, deadline, redelivered)
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
            return TurnOutcome(self._fallback(turn), state)
        speech = render_messages(messages)
        if not messages:
            # The bot stayed silent for BOT_TIMEOUT_MS: say so rather than an empty prompt.
            metrics.BOT_ERRORS.labels("NoReply").inc()
            log.warning("bot did not answer in time", extra={"turn_id": turn.turn_id})
            return TurnOutcome(self._fallback(turn), state)
        if not speech.sentences and not speech.hangup:
            log.info("bot sent nothing speakable (media only)", extra={"turn_id": turn.turn_id})
        state.options = {_normalise(label): value for label, value in speech.options} or None
        reply = pb.TurnReply(
            turn_id=turn.turn_id,
            call_sid=turn.call_sid,
            seq=turn.seq,
            say=speech.sentences,
            hangup=speech.hangup,
            options=[pb.Option(label=label, value=value) for label, value in speech.options],
        )
        return TurnOutcome(reply, state)

    def _fallback(self, turn: pb.TurnRequest) -> pb.TurnReply:
        return pb.TurnReply(
            turn_id=turn.turn_id,
            call_sid=turn.call_sid,
            seq=turn.seq,
            say=[self._s.fallback_phrase],
            fallback=True,
        )

    async def _ensure_identity(
        self, turn: pb.TurnRequest, state: CallState, deadline: float, fresh_key: bool = False
    ) -> None:
        if state.user_key and state.conversation and not fresh_key:
            return
        state.user_id = state.user_id or caller_user_id(turn.from_number)
        if self._bot.signs_user_keys:
            state.user_key = self._bot.sign_user_key(state.user_id)
            await self._bot.get_or_create_user(state.user_key, deadline=deadline)
        else:
            stale = state.user_key if fresh_key else None
            stored = None if fresh_key else await self._caller_key(state.user_id)
            if stored:
                state.user_key = stored
            else:
                state.user_key = await self._create_shared_user(state, deadline, stale)
        state.conversation = conversation_id(turn.call_sid)
        await self._bot.get_or_create_conversation(
            state.user_key, state.conversation, deadline=deadline
        )

    async def _create_shared_user(
        self, state: CallState, deadline: float, stale: str | None = None
    ) -> str:
        try:
            key = await self._bot.create_user(state.user_id, deadline=deadline)
        except BotpressError as exc:
            if exc.status != 409:
                raise
            # Most often a concurrent call from the same number created the user a moment ago
            # and is about to store its key.
            stored = await self._wait_for_caller_key(state.user_id, stale)
            if stored:
                return stored
            # The user exists but its key was lost (Redis flushed): a fresh user for this call.
            log.warning(
                "caller's Botpress key lost; creating a new user", extra={"error": exc.type}
            )
            state.user_id = f"{state.user_id}-{int(time.time())}"[:70]
            key = await self._bot.create_user(state.user_id, deadline=deadline)
        await self._redis.set(keys.caller_key(state.user_id), key, ex=keys.CALLER_KEY_TTL_S)
        return key

    async def _caller_key(self, user_id: str) -> str | None:
        raw = cast(bytes | None, await self._redis.get(keys.caller_key(user_id)))
        return raw.decode() if raw else None

    async def _wait_for_caller_key(
        self, user_id: str, stale: str | None, timeout_s: float = 3.0
    ) -> str | None:
        give_up = time.monotonic() + (0 if stale else timeout_s)
        polls = 0
        while True:
            stored = await self._caller_key(user_id)
            if stored and stored != stale:
                return stored
            if time.monotonic() >= give_up:
                return None
            await asyncio.sleep(ORDER_POLL_S[min(polls, len(ORDER_POLL_S) - 1)])
            polls += 1

    async def _exchange(
        self, turn: pb.TurnRequest, state: CallState, deadline: float, redelivered: bool
    ) -> list[dict[str, Any]]:
        try:
            await self._ensure_identity(turn, state, deadline)
            return await self._send_and_collect(turn, state, deadline, redelivered)
        except BotpressError as exc:
            if not exc.unauthorized:
                raise
            # A stale key (rotated secret, deleted user): one fresh key, one retry.
            await self._ensure_identity(turn, state, deadline, fresh_key=True)
            return await self._send_and_collect(turn, state, deadline, redelivered)

    def _outgoing(
        self, turn: pb.TurnRequest, state: CallState
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        call = {"callSid": turn.call_sid, "from": turn.from_number, "to": turn.to_number}
        if turn.kind == pb.TurnRequest.CALL_START:
            marker = {"voicebridge": {"kind": "call_start", "turnId": turn.turn_id, **call}}
            if self._s.opening_mode == "event":
                return {"type": "call_start", **call, **marker}, {}
            return {"type": "text", "text": self._s.opening_text}, marker
        text = turn.text
        if state.options:
            text = state.options.get(_normalise(text), text)
        return (
            {"type": "text", "text": text},
            {
                "voicebridge": {
                    "kind": "speech",
                    "turnId": turn.turn_id,
                    "confidence": round(turn.confidence, 3),
                    **call,
                }
            },
        )

    async def _send_and_collect(
        self, turn: pb.TurnRequest, state: CallState, deadline: float, redelivered: bool
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
            if turn.kind == pb.TurnRequest.CALL_START and self._s.opening_mode == "event":
                # Events carry their data in the payload; the bot greets in reply.
                await self._bot.create_event(
                    state.user_key, state.conversation, payload, deadline=deadline
                )
            elif sent is None:
                sent = await self._post_once(turn, state, payload, metadata, deadline)
            since = str(sent.get("createdAt", "")) if sent else ""
            messages, dropped = await self._collect(listener, deadline, earlier, since)
        if dropped and not messages:
            # The listen stream dropped: fall back to the conversation's message list.
            _, messages = await self._find_posted(turn, state, deadline)
        messages.sort(key=lambda m: str(m.get("createdAt", "")))
        return messages

    async def _post_once(
        self,
        turn: pb.TurnRequest,
        state: CallState,
        payload: dict[str, Any],
        metadata: dict[str, Any],
        deadline: float,
    ) -> dict[str, Any]:
        """POST the turn's message; before any retry, check whether the failed try landed."""
        attempt = 0
        while True:
            try:
                return await self._bot.create_message(
                    state.user_key, state.conversation, payload, metadata, deadline, retry=False
                )
            except BotpressError as exc:
                attempt += 1
                backoff_s = self._bot.retry_delay(exc, attempt, deadline)
                if backoff_s is None:
                    raise
                log.info(
                    "posting the turn failed (%s); checking before retrying",
                    exc.type,
                    extra={"turn_id": turn.turn_id},
                )
            await asyncio.sleep(backoff_s)
            try:
                found, _ = await self._find_posted(turn, state, deadline)
            except BotpressError:
                found = None
            if found is not None:
                return found

    async def _find_posted(
        self, turn: pb.TurnRequest, state: CallState, deadline: float
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Our message for this turn if Botpress has it (by metadata turnId), and the bot's
        messages after it, oldest first."""
        listed = await self._bot.list_messages(
            state.user_key, state.conversation, deadline, pages=3
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
    ) -> tuple[list[dict[str, Any]], bool]:
        """Bot messages until quiet for BOT_QUIET_MS after the first (a streamed message in
        progress is not quiet), a hangup, or the deadline. Returns (messages, stream_dropped)."""
        messages: list[dict[str, Any]] = list(earlier or [])
        seen = {m.get("id") for m in messages}
        if any(_has_hangup(m) for m in messages):
            return messages, False
        streaming: set[str] = set()
        while True:
            left = deadline - time.monotonic()
            wait = left if not messages or streaming else min(self._quiet_s, left)
            if wait <= 0:
                return messages, False
            try:
                signal = await asyncio.wait_for(listener.signals.get(), wait)
            except TimeoutError:
                return messages, False
            if signal is None:
                return messages, True
            kind = signal.get("type")
            data = signal.get("data") or {}
            if kind == "message_stream_delta":
                streaming.add(str(data.get("streamId")))
                continue
            if kind in ("message_stream_complete", "message_stream_abort"):
                streaming.discard(str(data.get("streamId")))
                data = data.get("message") or {}
                if kind == "message_stream_abort" or not data:
                    continue
                data = {**data, "isBot": True}
            elif kind != "message_created":
                continue
            if not data.get("isBot") or data.get("id") in seen:
                continue  # the echo of our own message, or one we already have
            if since and str(data.get("createdAt", "")) < since:
                continue  # said before our message: left from an earlier turn on a kept stream
            seen.add(data.get("id"))
            messages.append(data)
            if _has_hangup(data):
                return messages, False

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
                    deadline=time.monotonic() + 5,
                )
            except BotpressError as exc:
                log.info(
                    "could not tell the bot the call ended: %s",
                    exc,
                    extra={"call_sid": turn.call_sid},
                )
        await self._redis.delete(keys.call_state(turn.call_sid), keys.late_replies(turn.call_sid))
