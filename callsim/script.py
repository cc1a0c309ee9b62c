"""What the caller says: a fixed list of utterances, or a function asked at every turn.

A turn is a <Gather> in gather mode and the end of a bot reply in relay mode. Besides speech
(a string) and silence (None), a caller can press keys (`Dtmf`) or, in relay mode, talk over
the bot's reply (`BargeIn`). Written as text (`--say`, script files), those are ``dtmf:123``
and ``barge:N:words`` (cut in after N tokens of the reply and say ``words``).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final


class _HangUp:
    """The caller puts the phone down instead of answering."""

    def __repr__(self) -> str:
        return "HANG_UP"


HANG_UP: Final = _HangUp()


@dataclass(frozen=True)
class Dtmf:
    """The caller presses these keys (0-9, *, #), one after the other."""

    digits: str


@dataclass(frozen=True)
class BargeIn:
    """Relay mode: once ``after_tokens`` tokens of the bot's reply to the caller's previous
    turn have arrived, the caller talks over it for ``speak_s`` and says ``text``."""

    after_tokens: int
    text: str
    speak_s: float = 0.2


DTMF_KEYS = frozenset("0123456789*#")
_DTMF_PREFIX, _BARGE_PREFIX = "dtmf:", "barge:"
_COUNT = re.compile(r"[0-9]{1,6}")  # ASCII digits only: '²'.isdigit() is True

Utterance = str | None  # None (or ""): the caller stays silent
Reply = Utterance | _HangUp | Dtmf | BargeIn
# Called with what the bot said since the caller last spoke.
ScriptFn = Callable[[Sequence[str]], Reply | Awaitable[Reply]]


class Script:
    """A caller. A sequence is spoken in order and the caller hangs up when it runs out."""

    def __init__(self, source: Sequence[Utterance | Dtmf | BargeIn] | ScriptFn) -> None:
        self._fn: ScriptFn | None = None
        self._items: list[Utterance | Dtmf | BargeIn] | None = None
        self._index = 0
        if callable(source):
            self._fn = source
        else:
            self._items = list(source)

    def peek(self) -> Reply:
        """The next step of a fixed script without taking it (a function: None, unknown).

        Relay mode looks ahead for a BargeIn: it acts while the reply still streams."""
        if self._items is None or self._index >= len(self._items):
            return None
        item = self._items[self._index]
        return parse_action(item) if isinstance(item, str) and item else item

    def skip(self) -> None:
        self._index += 1

    async def next(self, heard: Sequence[str]) -> Reply:
        if self._items is not None:
            reply: Reply = HANG_UP
            if self._index < len(self._items):
                reply = self._items[self._index]
                self._index += 1
        else:
            assert self._fn is not None
            result = self._fn(heard)
            reply = await result if inspect.isawaitable(result) else result
        # An empty string is silence too: that is what `--say ""` and an empty line mean.
        if reply == "":
            return None
        return parse_action(reply) if isinstance(reply, str) else reply


def parse_action(text: str) -> str | Dtmf | BargeIn:
    """``dtmf:12#`` → Dtmf, ``barge:3:stop`` → BargeIn; any other text is speech."""
    lowered = text.lower()
    if lowered.startswith(_DTMF_PREFIX):
        digits = text[len(_DTMF_PREFIX) :].strip()
        if not digits or not set(digits) <= DTMF_KEYS:
            raise ValueError(f"{text!r}: dtmf: takes keys 0-9, * and #")
        return Dtmf(digits)
    if lowered.startswith(_BARGE_PREFIX):
        count, sep, words = text[len(_BARGE_PREFIX) :].partition(":")
        if not sep or not _COUNT.fullmatch(count.strip()) or not words.strip():
            raise ValueError(f"{text!r}: expected barge:N:words")
        return BargeIn(int(count), words.strip())
    return text


def load_script(path: str | Path) -> list[Utterance]:
    """Utterances from a file: a JSON list (null = silence), else one per line (empty = silence)."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(x is None or isinstance(x, str) for x in data):
            raise ValueError(f"{path}: expected a JSON list of strings or nulls")
        return [x or None for x in data]
    return [line.strip() or None for line in text.splitlines()]
