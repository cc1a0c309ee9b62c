"""Runs a Bot against the store: reacts to user messages/events and posts the bot's replies
(SSE signals + message list), applying latency, stalls and streaming.

An instant reply is posted with loop.call_soon (no task, no timer): it lands right after the
user's own message_created, which is what the benchmarks' "instant bot" means.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

from . import signals
from .bots import Bot, Outgoing, Reply, Turn
from .config import BotsimConfig
from .payloads import payload_text
from .store import Conversation, Event, Message, Workspace, new_id

_WORD_RE = re.compile(r"\S+\s*")


class BotRunner:
    def __init__(self, bot: Bot, config: BotsimConfig, rng: random.Random) -> None:
        self.bot = bot
        self._config = config
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()

    # -- triggers -------------------------------------------------------------------------

    def on_message(self, ws: Workspace, conv: Conversation, msg: Message) -> None:
        turn = Turn(
            "message",
            payload_text(msg.payload),
            msg.payload,
            msg.metadata,
            first=not conv.greeted,
            state=conv.bot_state,
        )
        self._react(ws, conv, turn)

    def on_event(self, ws: Workspace, conv: Conversation, event: Event) -> None:
        turn = Turn("event", "", event.payload, None, first=not conv.greeted, state=conv.bot_state)
        self._react(ws, conv, turn)

    def _react(self, ws: Workspace, conv: Conversation, turn: Turn) -> None:
        reply = self.bot.respond(turn)
        if reply is None or not reply.messages:
            return
        if reply.greeted:
            conv.greeted = True
        elif turn.kind == "message":
            # Any answered user message counts: the next one is no longer "first".
            conv.greeted = True
        if self._config.stall_rate and self._rng.random() < self._config.stall_rate:
            return  # accepted, never answered: the "bot is down" fault
        delay_s = (self._latency_ms() + reply.delay_ms) / 1000.0
        simple = (
            len(reply.messages) == 1
            and not reply.messages[0].stream
            and not reply.messages[0].delay_ms
        )
        loop = asyncio.get_running_loop()
        if simple and delay_s <= 0:
            loop.call_soon(self._post, ws, conv, reply.messages[0].payload, None)
        elif simple:
            loop.call_later(delay_s, self._post, ws, conv, reply.messages[0].payload, None)
        else:
            task = loop.create_task(self._deliver(ws, conv, reply, delay_s))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _latency_ms(self) -> float:
        base, jitter = self._config.latency_ms, self._config.latency_jitter_ms
        if jitter:
            return max(0.0, self._rng.gauss(base, jitter))
        return base

    # -- delivery -------------------------------------------------------------------------

    async def _deliver(
        self, ws: Workspace, conv: Conversation, reply: Reply, delay_s: float
    ) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        for out in reply.messages:
            if out.delay_ms:
                await asyncio.sleep(out.delay_ms / 1000.0)
            if not _alive(ws, conv):
                return
            if out.stream:
                await self._stream(ws, conv, out)
            else:
                self._post(ws, conv, out.payload, None)

    async def _stream(self, ws: Workspace, conv: Conversation, out: Outgoing) -> None:
        # Signal names and fields follow integrations/chat message-stream.ts.
        stream_id = new_id("stream")
        created_at = ws.clock.now()
        words = _WORD_RE.findall(payload_text(out.payload)) or [""]
        for seq, chunk in enumerate(words):
            if not _alive(ws, conv):
                return
            signals.publish(
                conv.listeners,
                "message_stream_delta",
                {
                    "streamId": stream_id,
                    "conversationId": conv.id,
                    "userId": ws.bot_user.id,
                    "createdAt": created_at,
                    "sequence": seq,
                    "delta": chunk,
                },
            )
            await asyncio.sleep(0)  # let the chunks go out as separate frames
        if out.abort:
            signals.publish(
                conv.listeners,
                "message_stream_abort",
                {"streamId": stream_id, "conversationId": conv.id},
            )
            return
        self._post(ws, conv, out.payload, stream_id)

    def _post(
        self, ws: Workspace, conv: Conversation, payload: dict[str, Any], stream_id: str | None
    ) -> None:
        if not _alive(ws, conv):
            return
        metadata = {"streamId": stream_id} if stream_id else None
        msg = ws.add_message(conv, ws.bot_user.id, payload, metadata)
        data = msg.to_json()
        if stream_id:
            signals.publish(
                conv.listeners, "message_stream_complete", {"streamId": stream_id, "message": data}
            )
        data["isBot"] = True
        signals.publish(conv.listeners, "message_created", data)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _alive(ws: Workspace, conv: Conversation) -> bool:
    return ws.conversations.get(conv.id) is conv
