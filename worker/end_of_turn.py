"""When the bot's turn is over: the one end-of-turn rule (docs/architecture.md, "End of turn").

Botpress's Chat API never says that a bot has finished its turn, so the reply is complete at
the first of:

1. a marker that ends the call (`<hangup/>`) or hands it to a person (`<transfer to="NAME"/>`);
2. a message that hands the turn to the caller: a choice or dropdown, or a text or markdown
   whose last sentence is a question (it ends with "?", trailing quotes, brackets and spaces
   aside);
3. the quiet window after the latest message: `BOT_QUIET_MS=auto` (the default) learns it per
   bot from the gaps seen between consecutive messages of one turn (QuietWindow); a number
   fixes it;
4. the bot's time-out.

A message that arrives after its turn's reply went out is kept as a late reply and spoken at the
call's next webhook; its gap teaches the window (worker/turn_handler.py observes the listen
stream for TRAIL_OBSERVE_S after replying).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from worker.speech import find_marker, markdown_to_speech

log = logging.getLogger(__name__)

# What a question's text ends with: "?" (or the full-width "？"), then closing punctuation.
_QUESTION_END_CHARS = "?？"
_CLOSING = "\"'»”’)]}*_ \t\r\n"

# The learned window: until MIN_SAMPLES turns were seen it is INITIAL_S; then the 99th
# percentile of the gaps seen (turns with a second message) plus MARGIN_S, within
# [0, MAX_S]; 0 when no recent turn had a second message.
INITIAL_S = 0.2
MARGIN_S = 0.05
MAX_S = 1.5
MIN_SAMPLES = 20
SAMPLES_KEPT = 500
GAP_PERCENTILE = 0.99
# How often a worker pushes its samples and reads everyone's (workers start warm from Redis).
SYNC_INTERVAL_S = 2.0
# After a reply went out, the listen stream is watched this long for the bot's trailing
# messages (kept late, and their gaps learned). Longer gaps are not one turn's messages.
TRAIL_OBSERVE_S = MAX_S


def ends_call(message: dict[str, Any]) -> bool:
    """A hangup or transfer marker: the bot's part of the call is over (a refused transfer
    goes on with the caller's next turn)."""
    payload = message.get("payload") or {}
    return any(find_marker(v) for v in payload.values() if isinstance(v, str))


def hands_turn_to_caller(message: dict[str, Any]) -> bool:
    """A choice/dropdown, or a text/markdown whose last sentence is a question."""
    payload = message.get("payload") or {}
    kind = payload.get("type")
    if kind in ("choice", "dropdown"):
        return True
    if kind == "text":
        said = str(payload.get("text", ""))
    elif kind == "markdown":
        said = markdown_to_speech(str(payload.get("markdown", "")))
    else:
        return False
    said = said.rstrip(_CLOSING)
    return bool(said) and said[-1] in _QUESTION_END_CHARS


def completes_turn(message: dict[str, Any]) -> bool:
    """Nothing more is waited for after this message."""
    return ends_call(message) or hands_turn_to_caller(message)


def learned_window_s(samples: list[float]) -> float:
    """The quiet window from recent turns' largest gaps (seconds; 0 = one message)."""
    if len(samples) < MIN_SAMPLES:
        return INITIAL_S
    gaps = sorted(g for g in samples if g > 0)
    if not gaps:
        return 0.0
    at = gaps[min(len(gaps) - 1, int(GAP_PERCENTILE * len(gaps)))]
    return min(at + MARGIN_S, MAX_S)


class QuietWindow:
    """How long to wait after a bot message for another one.

    fixed_s set (BOT_QUIET_MS=N): always that. Else learned per bot (the Chat API base URL names
    the bot) from every worker's samples in Redis; each worker keeps a local copy, refreshed every
    SYNC_INTERVAL_S, so the hot path reads a float."""

    def __init__(self, redis: Redis, bot_id: str, fixed_s: float | None) -> None:
        self._redis = redis
        self._key = keys.bot_turn_gaps(bot_id)
        self.fixed_s = fixed_s
        self._window_s = fixed_s if fixed_s is not None else INITIAL_S
        self._unsent: deque[float] = deque(maxlen=SAMPLES_KEPT)
        self._next_sync = 0.0

    @property
    def seconds(self) -> float:
        return self._window_s

    def record(self, largest_gap_s: float) -> None:
        """One finished turn: the largest gap between two of its bot messages (0: one message)."""
        if self.fixed_s is None:
            self._unsent.append(round(largest_gap_s, 4))

    async def sync(self) -> None:
        """Push our samples, read everyone's, recompute. Redis trouble: keep the last window."""
        if self.fixed_s is not None:
            return
        pipe = self._redis.pipeline(transaction=False)
        if self._unsent:
            pipe.lpush(self._key, *self._unsent)
            pipe.ltrim(self._key, 0, SAMPLES_KEPT - 1)
            pipe.expire(self._key, keys.BOT_GAPS_TTL_S)
        pipe.lrange(self._key, 0, SAMPLES_KEPT - 1)
        try:
            result = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.info("quiet window not synced: %s", exc)
            return
        self._unsent.clear()
        samples = [float(s) for s in result[-1]]
        window_s = learned_window_s(samples)
        if abs(window_s - self._window_s) > 0.001:
            log.info("quiet window now %.0f ms (%d samples)", window_s * 1000, len(samples))
        self._window_s = window_s

    async def run(self) -> None:
        """Until cancelled: sync every SYNC_INTERVAL_S (a new worker starts warm at once)."""
        while True:
            await self.sync()
            await asyncio.sleep(SYNC_INTERVAL_S)


class Gaps:
    """The gaps between one turn's bot messages, as they arrive."""

    def __init__(self) -> None:
        self._last: float | None = None
        self.largest_s = 0.0

    def message(self) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.largest_s = max(self.largest_s, now - self._last)
        self._last = now
