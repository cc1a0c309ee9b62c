"""A simulated caller: unique utterances, think time, and patience for late answers.

Every utterance is unique in the run ("caller 7 line 3 maple"), so the echo bot's "You said: ..."
names the turn it answers. A caller repeats itself when the edge says it is having trouble (the
turn was not written), goes on with its next line after a hold phrase (the late answer is spoken
at a later webhook), and once its lines are done stays on the line, silent, until every line was
answered or its drain period runs out.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from callsim.script import HANG_UP, Reply

WORDS = (
    "maple", "river", "copper", "lantern", "meadow", "harbor", "pepper", "velvet",
    "canyon", "violet", "summit", "thistle", "orchard", "falcon", "quartz", "willow",
)  # fmt: skip
ECHO_RE = re.compile(r"You said: (caller \d+ line \d+ [a-z]+)")


def utterance(call_index: int, line: int, rng: random.Random) -> str:
    # No "bye" (hangs up) and no leading "slow" (botsim's slow turn) can appear.
    return f"caller {call_index} line {line} {rng.choice(WORDS)}"


@dataclass
class Caller:
    index: int
    lines: list[str]
    trouble_phrase: str
    drain_s: float
    drain_poll_s: float
    spoken: list[str] = field(default_factory=list)  # distinct lines, in the order said
    answered: set[str] = field(default_factory=set)
    repeats: int = 0
    resaid: int = 0  # lines given again because their session died before they were said
    said: set[str] = field(default_factory=set)  # lines callsim sent (relay mode: on_event)
    track_said: bool = False
    reprompt_phrase: str | None = None  # relay mode: the edge's "say it again"
    reprompted: list[str] = field(default_factory=list)  # lines said again after the reprompt
    _next: int = 0
    _last: str | None = None
    _drain_until: float | None = None

    @classmethod
    def make(
        cls, index: int, turns: int, rng: random.Random, trouble_phrase: str, drain_s: float
    ) -> Caller:
        lines = [utterance(index, k, rng) for k in range(1, turns + 1)]
        return cls(index, lines, trouble_phrase, drain_s, drain_poll_s=1.5)

    @property
    def from_number(self) -> str:
        return f"+1555{self.index:07d}"  # one Botpress user per call

    def on_event(self, event: tuple[str, ...]) -> None:
        if event[0] == "caller_say" and len(event) > 1:
            self.said.add(event[1])

    def done_speaking(self) -> bool:
        return self._next >= len(self.lines)

    def all_answered(self) -> bool:
        return all(line in self.answered for line in self.spoken)

    async def __call__(self, heard: Sequence[str]) -> Reply:
        for text in heard:
            self.answered.update(ECHO_RE.findall(text))
        if self._last is not None and any(self.trouble_phrase in text for text in heard):
            # Nothing was written for that line: say it again (the same turn number).
            self.repeats += 1
            return self._last
        if self.track_said and self._last is not None and self._last not in self.said:
            self.resaid += 1
            return self._last
        reprompt = self.reprompt_phrase
        unanswered = self._last is not None and self._last not in self.answered
        if reprompt and unanswered and any(reprompt in text for text in heard):
            assert self._last is not None
            self.reprompted.append(self._last)
            return self._last
        if self._next < len(self.lines):
            line = self.lines[self._next]
            self._next += 1
            self._last = line
            self.spoken.append(line)
            return line
        self._last = None
        if self.all_answered():
            return HANG_UP
        now = time.monotonic()
        if self._drain_until is None:
            self._drain_until = now + self.drain_s
        if now >= self._drain_until:
            return HANG_UP
        # Silence: the edge speaks any late answer waiting for this call.
        await asyncio.sleep(self.drain_poll_s)
        return None
