"""Bots decide what to say; the runtime (runtime.py) decides when, and posts it.

A bot is pure: given a Turn it returns a Reply (messages + timing), so a new bot is a small
class and needs no knowledge of HTTP, queues or faults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

GREETING = "Hello! I am the echo bot. Say something and I will repeat it. Say bye to hang up."
GOODBYE = "Goodbye! <hangup/>"
ECHO_FORMAT = "You said: {text}"

_BYE_RE = re.compile(r"\b(?:good)?bye\b", re.IGNORECASE)
_SLOW_RE = re.compile(r"^\s*slow", re.IGNORECASE)
# Payload `type`s of a POST /events that open a call, besides the metadata marker.
OPENING_EVENT_TYPES = frozenset({"call_start", "conversation_started", "start"})


@dataclass(frozen=True)
class Turn:
    kind: Literal["message", "event"]
    text: str
    payload: dict[str, Any]
    metadata: dict[str, Any] | None
    # First user turn in this conversation (no greeting sent yet).
    first: bool
    # Free-form per-conversation memory a bot may read and write.
    state: dict[str, Any]

    @property
    def is_call_start(self) -> bool:
        if self.kind == "event":
            return (
                self.payload.get("type") in OPENING_EVENT_TYPES
                or _voicebridge_kind(self.payload) == "call_start"
            )
        return _voicebridge_kind(self.metadata) == "call_start"


def _voicebridge_kind(obj: dict[str, Any] | None) -> Any:
    vb = (obj or {}).get("voicebridge")
    return vb.get("kind") if isinstance(vb, dict) else None


@dataclass(frozen=True)
class Outgoing:
    """One bot message. `stream` sends its text as message_stream_delta signals first;
    `abort` ends such a stream with message_stream_abort and never creates the message."""

    payload: dict[str, Any]
    delay_ms: float = 0.0
    stream: bool = False
    abort: bool = False


@dataclass(frozen=True)
class Reply:
    messages: list[Outgoing] = field(default_factory=list)
    # Extra wait before the first message (on top of the configured latency).
    delay_ms: float = 0.0
    greeted: bool = False


class Bot(Protocol):
    def respond(self, turn: Turn) -> Reply | None:
        """What to say to this turn; None (or no messages) = stay silent."""
        ...


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


class EchoBot:
    """The default bot: greets, echoes, says goodbye with `<hangup/>`."""

    def __init__(self, slow_ms: float = 3000.0, stream: bool = False) -> None:
        self._slow_ms = slow_ms
        self._stream = stream

    def respond(self, turn: Turn) -> Reply | None:
        if turn.is_call_start or (turn.first and turn.kind == "message"):
            return self._say(GREETING, 0.0, greeted=True)
        if turn.kind == "event":
            return None
        delay = self._slow_ms if _SLOW_RE.match(turn.text) else 0.0
        if _BYE_RE.search(turn.text):
            return self._say(GOODBYE, delay)
        heard = turn.text or f"a {turn.payload.get('type', 'message')}"
        return self._say(ECHO_FORMAT.format(text=heard), delay)

    def _say(self, words: str, delay_ms: float, greeted: bool = False) -> Reply:
        return Reply(
            [Outgoing(text(words), stream=self._stream)], delay_ms=delay_ms, greeted=greeted
        )


def is_slow(text_: str) -> bool:
    return bool(_SLOW_RE.match(text_))
