"""What the caller says: a fixed list of utterances, or a function asked at every <Gather>."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Final


class _HangUp:
    """The caller puts the phone down instead of answering."""

    def __repr__(self) -> str:
        return "HANG_UP"


HANG_UP: Final = _HangUp()

Utterance = str | None  # None (or ""): the caller stays silent
Reply = Utterance | _HangUp
# Called with what the bot said since the caller last spoke.
ScriptFn = Callable[[Sequence[str]], Reply | Awaitable[Reply]]


class Script:
    """A caller. A sequence is spoken in order and the caller hangs up when it runs out."""

    def __init__(self, source: Sequence[Utterance] | ScriptFn) -> None:
        self._fn: ScriptFn | None = None
        self._items: Iterator[Utterance] | None = None
        if callable(source):
            self._fn = source
        else:
            self._items = iter(list(source))

    async def next(self, heard: Sequence[str]) -> Reply:
        if self._items is not None:
            reply: Reply = next(self._items, HANG_UP)
        else:
            assert self._fn is not None
            result = self._fn(heard)
            reply = await result if inspect.isawaitable(result) else result
        # An empty string is silence too: that is what `--say ""` and an empty line mean.
        return None if reply == "" else reply


def load_script(path: str | Path) -> list[Utterance]:
    """Utterances from a file: a JSON list (null = silence), else one per line (empty = silence)."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(x is None or isinstance(x, str) for x in data):
            raise ValueError(f"{path}: expected a JSON list of strings or nulls")
        return [x or None for x in data]
    return [line.strip() or None for line in text.splitlines()]
