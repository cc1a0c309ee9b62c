"""Classify turns and keep latency in HDR histograms, as webhooks complete.

A turn is one webhook Twilio makes during a call (the first one, a Gather action, a Redirect);
status callbacks are not turns. Its class says what the caller experienced:

- answered: the bridge spoke a reply;
- reprompt_late: the bridge spoke its hold phrase (the bot missed the deadline), or its reprompt
  although the caller had spoken;
- reprompt_silent: the reprompt after a silence, as designed;
- trouble: the bridge's "having trouble" phrase (Redis or the bot unreachable): the call
  survives, but the caller got no answer;
- hangup: the response ended the call;
- error: no usable TwiML (HTTP error, over Twilio's 15 s, invalid TwiML).

Relay mode (ConversationRelay) adds talk cycles (`RelayStats`): time to first token and to the
end of each cycle, with the protocol checks a run must pass (no protocol error, no token after
an interrupt).

Markers (optional): texts looked for in what each turn's response said, in the order they were
said, so a load can tell which of a bot's messages reached the caller in which answer.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from callsim.call import DEFAULT_HOLD_PHRASE, WebhookRecord
from callsim.relay import RelayState, TalkCycle

# The edge's defaults (REPROMPT_PHRASE and its late-reply hold phrase); override per run.
DEFAULT_REPROMPT_PHRASE = "Sorry, I didn't catch that. Could you say it again?"
DEFAULT_TROUBLE_PHRASE = "Sorry, I'm having trouble right now."

TURN_OUTCOMES = ("answered", "reprompt_late", "reprompt_silent", "trouble", "hangup", "error")
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}

# Microseconds from 1 µs to 1 h at 3 significant digits: 1 ms resolution up to 1 s and beyond
# Twilio's 15 s, in a few hundred KB.
_LOWEST_US, _HIGHEST_US, _DIGITS = 1, 3_600_000_000, 3
MAX_SAMPLES = 1_000_000  # kept for the plot; the histograms themselves hold every turn


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Classifier:
    reprompt_phrase: str = DEFAULT_REPROMPT_PHRASE
    hold_phrase: str = DEFAULT_HOLD_PHRASE
    trouble_phrase: str = DEFAULT_TROUBLE_PHRASE

    def classify(self, record: WebhookRecord) -> str:
        if record.error is not None:
            return "error"
        if record.ended_call:
            return "hangup"
        spoken = _norm(" ".join(record.said))
        if self.trouble_phrase and _norm(self.trouble_phrase) in spoken:
            return "trouble"
        if self.hold_phrase and _norm(self.hold_phrase) in spoken:
            return "reprompt_late"
        if self.reprompt_phrase and _norm(self.reprompt_phrase) in spoken:
            return "reprompt_silent" if record.after_silence else "reprompt_late"
        return "answered"


def marker_sequence(record: WebhookRecord, markers: tuple[str, ...]) -> tuple[int, ...]:
    """The indices of the markers found in the response's speech, in the order they were said
    (a marker said twice appears twice); case and spacing are ignored."""
    spoken = _norm(" ".join(record.said))
    found: list[tuple[int, int]] = []
    for index, marker in enumerate(markers):
        needle = _norm(marker)
        at = spoken.find(needle) if needle else -1
        while at >= 0:
            found.append((at, index))
            at = spoken.find(needle, at + len(needle))
    return tuple(index for _, index in sorted(found))


def new_histogram() -> HdrHistogram:
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)


def percentiles_ms(histogram: HdrHistogram) -> dict[str, float]:
    if histogram.get_total_count() == 0:
        return {**dict.fromkeys(PERCENTILES, 0.0), "max": 0.0, "mean": 0.0, "count": 0}
    out = {name: histogram.get_value_at_percentile(p) / 1000.0 for name, p in PERCENTILES.items()}
    out["max"] = histogram.get_max_value() / 1000.0
    out["mean"] = round(histogram.get_mean_value() / 1000.0, 3)
    out["count"] = histogram.get_total_count()
    return out


@dataclass
class TurnStats:
    """Everything run_load learns, fed one webhook record at a time (on the event loop)."""

    classifier: Classifier
    expected_interval_ms: float  # the caller's pace, for coordinated-omission correction
    started_at: float = field(default_factory=time.monotonic)
    latency: HdrHistogram = field(default_factory=new_histogram)
    corrected: HdrHistogram = field(default_factory=new_histogram)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[tuple[float, float, str]] = field(default_factory=list)  # (t_s, ms, outcome)
    turns: int = 0
    markers: tuple[str, ...] = ()
    marker_counts: Counter[str] = field(default_factory=Counter)  # times each marker was said
    # (t_s, ms, outcome, marker_sequence) of every turn, when markers are given
    marked: list[tuple[float, float, str, tuple[int, ...]]] = field(default_factory=list)

    def add(self, record: WebhookRecord) -> None:
        if record.kind == "status":
            return
        outcome = self.classifier.classify(record)
        self.turns += 1
        self.outcomes[outcome] += 1
        if record.error is not None:
            self.errors[record.error[:200]] += 1
        sequence = marker_sequence(record, self.markers) if self.markers else ()
        for index in sequence:
            self.marker_counts[self.markers[index]] += 1
        if record.sent_at == 0.0:
            return  # never sent (refused URL): no latency to speak of
        value_us = min(max(int(record.latency_ms * 1000), _LOWEST_US), _HIGHEST_US)
        self.latency.record_value(value_us)
        # The caller would have spoken again every think-time: a stall longer than that hides
        # the turns that could not start. record_corrected_value fills them back in.
        self.corrected.record_corrected_value(value_us, int(self.expected_interval_ms * 1000))
        at = record.scheduled_at - self.started_at
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append((at, record.latency_ms, outcome))
        if self.markers and len(self.marked) < MAX_SAMPLES:
            self.marked.append((at, record.latency_ms, outcome, sequence))


@dataclass
class RelayStats:
    """Relay mode's talk cycles, fed one at a time as they complete or are cut off, then each
    call's relay state when the call is over (sessions, protocol errors, tokens after interrupt).

    A cycle is timed from its trigger's scheduled time (the prompt, the setup, the start of a
    silence): to its first token, and to its ``last: true`` (the end of the talk cycle).
    """

    expected_interval_ms: float
    started_at: float = field(default_factory=time.monotonic)
    first_token: HdrHistogram = field(default_factory=new_histogram)
    first_token_corrected: HdrHistogram = field(default_factory=new_histogram)
    cycle_end: HdrHistogram = field(default_factory=new_histogram)
    cycle_end_corrected: HdrHistogram = field(default_factory=new_histogram)
    cycles: int = 0
    interrupted: int = 0
    triggers: Counter[str] = field(default_factory=Counter)
    sessions: Counter[str] = field(default_factory=Counter)  # by status
    protocol_errors: Counter[str] = field(default_factory=Counter)  # by reason
    tokens_after_interrupt: int = 0
    tokens_in_flight_at_interrupt: int = 0
    interrupts: int = 0
    barge_ins_missed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # (t_s, first token ms, cycle end ms or None, trigger)
    samples: list[tuple[float, float, float | None, str]] = field(default_factory=list)

    def add_cycle(self, cycle: TalkCycle) -> None:
        self.cycles += 1
        self.triggers[cycle.trigger] += 1
        self.interrupted += cycle.interrupted
        expected_us = int(self.expected_interval_ms * 1000)
        first_ms, end_ms = cycle.first_token_ms, cycle.complete_ms
        if first_ms is None:
            return
        first_us = _clamp_us(first_ms)
        self.first_token.record_value(first_us)
        self.first_token_corrected.record_corrected_value(first_us, expected_us)
        if end_ms is not None:
            end_us = _clamp_us(end_ms)
            self.cycle_end.record_value(end_us)
            self.cycle_end_corrected.record_corrected_value(end_us, expected_us)
        if len(self.samples) < MAX_SAMPLES:
            at = cycle.started_at - self.started_at
            self.samples.append((at, first_ms, end_ms, cycle.trigger))

    def add_call(self, state: RelayState) -> None:
        for session in state.sessions:
            self.sessions[session.status] += 1
        for error in state.protocol_errors:
            self.protocol_errors[error.reason[:200]] += 1
        for message in state.errors:
            self.errors[message[:200]] += 1
        self.tokens_after_interrupt += state.tokens_after_interrupt
        self.tokens_in_flight_at_interrupt += state.tokens_in_flight_at_interrupt
        self.interrupts += state.interrupts
        self.barge_ins_missed += state.barge_ins_missed

    def summary(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "interrupted": self.interrupted,
            "triggers": dict(self.triggers),
            "first_token_ms": percentiles_ms(self.first_token),
            "first_token_corrected_ms": percentiles_ms(self.first_token_corrected),
            "cycle_end_ms": percentiles_ms(self.cycle_end),
            "cycle_end_corrected_ms": percentiles_ms(self.cycle_end_corrected),
            "sessions": dict(self.sessions),
            "protocol_errors": sum(self.protocol_errors.values()),
            "protocol_error_reasons": dict(self.protocol_errors.most_common(10)),
            "tokens_after_interrupt": self.tokens_after_interrupt,
            "tokens_in_flight_at_interrupt": self.tokens_in_flight_at_interrupt,
            "interrupts": self.interrupts,
            "barge_ins_missed": self.barge_ins_missed,
            "errors": dict(self.errors.most_common(10)),
        }


def _clamp_us(ms: float) -> int:
    return min(max(int(ms * 1000), _LOWEST_US), _HIGHEST_US)
