"""Many concurrent calls against one voice URL: `run_load(LoadConfig) -> LoadReport`.

Open model across calls, closed within a call: call i rings at i * ramp_up_s / calls whatever
happened to the others, and each caller speaks think_time_s after hearing the bot. Every
request's latency runs from its scheduled time (see callsim.call), so a stalled generator or a
slow bridge both show up in the figures instead of silently lowering the load.

A call whose TwiML connects a ConversationRelay is followed as one (callsim.relay): its talk
cycles go to `LoadReport.relay` (time to first token, time to the cycle's end, protocol errors,
tokens after an interrupt), its webhooks (the voice webhook, the <Connect action>) to the turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, TextIO

import aiohttp
from hdrh.histogram import HdrHistogram

from callsim.call import TWILIO_WEBHOOK_TIMEOUT_S, CallResult, place_call
from callsim.script import Utterance, parse_action
from callsim.stats import (
    DEFAULT_HOLD_PHRASE,
    DEFAULT_REPROMPT_PHRASE,
    DEFAULT_TROUBLE_PHRASE,
    TURN_OUTCOMES,
    Classifier,
    RelayStats,
    TurnStats,
    percentiles_ms,
)

MAX_CALLS = 20_000  # a load run is bounded in count...
MAX_TURNS = 10_000
PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class LoadConfig:
    url: str
    account_sid: str
    auth_token: str
    calls: int = 10
    ramp_up_s: float = 0.0
    turns: int | None = None  # utterances per caller; None: the script once through
    think_time_s: float = 1.0
    script: tuple[Utterance, ...] = ("hello",)  # cycled; None/"" = silence
    duration_s: float | None = None  # callers hang up at their next Gather after this
    public_url: str | None = None  # what requests are signed for (see place_call)
    status_url: str | None = None
    reprompt_phrase: str = DEFAULT_REPROMPT_PHRASE
    hold_phrase: str = DEFAULT_HOLD_PHRASE
    trouble_phrase: str = DEFAULT_TROUBLE_PHRASE
    webhook_timeout_s: float = TWILIO_WEBHOOK_TIMEOUT_S
    max_webhooks_per_call: int | None = None  # None: 3 per turn + 10
    progress: TextIO | None = None  # a live line ~1/s (e.g. sys.stderr)
    # Texts to find in each turn's speech (callsim.stats.marker_sequence): counted, and each
    # turn's sequence kept in LoadReport.marked.
    markers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.calls <= MAX_CALLS:
            raise ValueError(f"calls must be 1..{MAX_CALLS}, got {self.calls}")
        if self.turns is not None and not 0 <= self.turns <= MAX_TURNS:
            raise ValueError(f"turns must be 0..{MAX_TURNS}, got {self.turns}")
        if self.ramp_up_s < 0 or self.think_time_s < 0:
            raise ValueError("ramp_up_s and think_time_s must be >= 0")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration_s must be > 0")
        if not self.script:
            raise ValueError("script needs at least one utterance")
        for item in self.script:
            if item:
                parse_action(item)  # a mistyped dtmf:/barge: step fails here, not mid-run

    @property
    def turns_per_call(self) -> int:
        return len(self.script) if self.turns is None else self.turns

    @property
    def max_webhooks(self) -> int:
        return self.max_webhooks_per_call or 3 * self.turns_per_call + 10

    def time_limit_s(self) -> float:
        """...and in time: past this, calls still running are cancelled."""
        per_webhook = self.think_time_s + self.webhook_timeout_s
        if self.duration_s is not None:
            # Callers stop at their next Gather after duration_s; allow the turn in flight.
            return self.duration_s + per_webhook + 5.0
        return self.ramp_up_s + self.max_webhooks * per_webhook + 5.0


@dataclass
class LoadReport:
    config: dict[str, Any]
    elapsed_s: float
    calls_started: int
    # place_call outcomes, plus "cancelled" (time limit) and "crashed" (a callsim bug)
    call_outcomes: dict[str, int]
    turns: int
    turn_outcomes: dict[str, int]
    turns_per_s: float
    status_callbacks: dict[str, int]
    errors: dict[str, int]  # most common error messages
    histogram: HdrHistogram = field(repr=False)
    corrected_histogram: HdrHistogram = field(repr=False)
    samples: list[tuple[float, float, str]] = field(repr=False, default_factory=list)
    marker_counts: dict[str, int] = field(default_factory=dict)  # times each marker was said
    # (t_s, ms, outcome, marker indices in the order said) of every turn, with markers
    marked: list[tuple[float, float, str, tuple[int, ...]]] = field(
        repr=False, default_factory=list
    )
    relay_stats: RelayStats | None = field(repr=False, default=None)

    # The percentile summaries are read from the histograms when first asked for: a bench
    # shard runs one load per ten calls and merges their histograms, and reading percentiles
    # off six pure-Python HDR histograms per load cost it more CPU than the calls (25 s at 800
    # relay calls), for summaries nobody read.
    @cached_property
    def latency_ms(self) -> dict[str, float]:
        """From each request's scheduled send time."""
        return percentiles_ms(self.histogram)

    @cached_property
    def latency_corrected_ms(self) -> dict[str, float]:
        """The same, plus the coordinated-omission correction."""
        return percentiles_ms(self.corrected_histogram)

    @property
    def met_relay(self) -> bool:
        """Some call connected a ConversationRelay session."""
        stats = self.relay_stats
        return stats is not None and bool(stats.cycles or stats.sessions)

    @cached_property
    def relay(self) -> dict[str, Any] | None:
        """Relay mode: RelayStats.summary() (None when no call connected a relay session)."""
        return self.relay_stats.summary() if self.relay_stats and self.met_relay else None

    def to_json(self) -> dict[str, Any]:
        stats = self.relay_stats
        self.relay_stats = None  # not deep-copied by asdict
        try:
            data = asdict(self)
        finally:
            self.relay_stats = stats
        for key in ("histogram", "corrected_histogram", "samples", "marked", "relay_stats"):
            data.pop(key)
        data["latency_ms"] = self.latency_ms
        data["latency_corrected_ms"] = self.latency_corrected_ms
        data["relay"] = self.relay
        # Compressed HDR histograms, so runs can be merged or re-plotted later.
        data["hdr"] = {
            "latency_us": self.histogram.encode().decode(),
            "latency_corrected_us": self.corrected_histogram.encode().decode(),
        }
        if stats is not None and self.relay is not None:
            data["hdr"].update(
                {
                    "relay_first_token_us": stats.first_token.encode().decode(),
                    "relay_first_token_corrected_us": stats.first_token_corrected.encode().decode(),
                    "relay_cycle_end_us": stats.cycle_end.encode().decode(),
                    "relay_cycle_end_corrected_us": stats.cycle_end_corrected.encode().decode(),
                }
            )
        return data

    def broken(self) -> int:
        """What a CI run should fail on: errors, invalid TwiML, and relay protocol breaches."""
        count = self.turn_outcomes["error"] + sum(
            self.call_outcomes.get(k, 0) for k in ("error", "invalid_twiml", "cancelled", "crashed")
        )
        if self.relay is not None:
            count += self.relay["protocol_errors"] + self.relay["tokens_after_interrupt"]
        return count


def _caller(config: LoadConfig) -> list[Utterance]:
    """The script cycled to the turn count; the caller hangs up when it runs out."""
    script = config.script
    return [script[i % len(script)] or None for i in range(config.turns_per_call)]


def _progress_line(stats: TurnStats, relay: RelayStats, active: int, done: int, rate: float) -> str:
    p = percentiles_ms(stats.latency)
    line = (
        f"[{time.monotonic() - stats.started_at:6.1f}s] calls {active} active {done} done"
        f" | turns {stats.turns} ({rate:.1f}/s) | p50 {p['p50']:.1f} ms"
        f" p99 {p['p99']:.1f} ms | errors {stats.outcomes['error']}"
    )
    if relay.cycles:
        first = percentiles_ms(relay.first_token)
        line += (
            f" | cycles {relay.cycles} first token p50 {first['p50']:.1f} p99 {first['p99']:.1f} ms"
        )
    return line


async def _show_progress(
    out: TextIO,
    stats: TurnStats,
    relay: RelayStats,
    tasks: list[asyncio.Task[Any]],
    starts: list[float],
) -> None:
    live = out.isatty()
    last_turns, last_at = 0, time.monotonic()
    try:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            now = time.monotonic()
            done = sum(t.done() for t in tasks)
            rung = sum(at <= now for at in starts)  # calls still waiting to ring are not active
            rate = (stats.turns - last_turns) / max(now - last_at, 1e-9)
            last_turns, last_at = stats.turns, now
            line = _progress_line(stats, relay, max(rung - done, 0), done, rate)
            # A terminal gets one line redrawn in place; a log gets one line per tick.
            out.write(f"\r\x1b[K{line}" if live else line + "\n")
            out.flush()
    finally:
        if live:
            out.write("\n")
            out.flush()


async def run_load(config: LoadConfig) -> LoadReport:
    stats = TurnStats(
        Classifier(config.reprompt_phrase, config.hold_phrase, config.trouble_phrase),
        expected_interval_ms=config.think_time_s * 1000.0,
        markers=config.markers,
    )
    start = stats.started_at
    relay = RelayStats(config.think_time_s * 1000.0, started_at=start)
    hangup_at = None if config.duration_s is None else start + config.duration_s
    # A connection per call (each holds one while its webhook is in flight), kept alive
    # between turns, plus a few for status callbacks.
    connector = aiohttp.TCPConnector(limit=config.calls + 10)
    starts = [start + config.ramp_up_s * i / config.calls for i in range(config.calls)]
    # trust_env=False: load goes to the given URL only, never through an environment proxy.
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as client:
        tasks = [
            asyncio.create_task(
                place_call(
                    client,
                    config.url,
                    account_sid=config.account_sid,
                    auth_token=config.auth_token,
                    caller=_caller(config),
                    from_number=f"+1555{i:07d}",
                    signing_base=config.public_url,
                    status_url=config.status_url,
                    think_time_s=config.think_time_s,
                    start_at=starts[i],
                    hangup_at=hangup_at,
                    max_webhooks=config.max_webhooks,
                    webhook_timeout_s=config.webhook_timeout_s,
                    on_webhook=stats.add,
                    on_cycle=relay.add_cycle,
                    hold_phrase=config.hold_phrase,
                )
            )
            for i in range(config.calls)
        ]
        progress = (
            asyncio.create_task(_show_progress(config.progress, stats, relay, tasks, starts))
            if config.progress is not None
            else None
        )
        try:
            await asyncio.wait(tasks, timeout=config.time_limit_s())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if progress is not None:
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress
    elapsed = time.monotonic() - start
    return _report(config, stats, relay, tasks, elapsed)


def _report(
    config: LoadConfig,
    stats: TurnStats,
    relay: RelayStats,
    tasks: list[asyncio.Task[CallResult]],
    elapsed: float,
) -> LoadReport:
    call_outcomes: Counter[str] = Counter()
    status: Counter[str] = Counter()
    for task in tasks:
        if task.cancelled():
            call_outcomes["cancelled"] += 1
            continue
        exc = task.exception()
        if exc is not None:  # a callsim bug, not a bridge failure: say so loudly
            call_outcomes["crashed"] += 1
            stats.errors[f"callsim crashed: {exc!r}"[:200]] += 1
            continue
        result = task.result()
        call_outcomes[result.outcome] += 1
        if result.relay is not None:
            relay.add_call(result.relay)
        for record in result.webhooks:
            if record.kind == "status":
                status["failed" if record.error else "ok"] += 1
    # Not asdict(): it would deep-copy the progress stream. The token never goes in a file.
    cfg = {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if f.name not in ("progress", "auth_token")
    }
    cfg["script"] = list(config.script)
    return LoadReport(
        config=cfg,
        elapsed_s=round(elapsed, 3),
        calls_started=len(tasks),
        call_outcomes=dict(call_outcomes),
        turns=stats.turns,
        turn_outcomes={name: stats.outcomes[name] for name in TURN_OUTCOMES},
        turns_per_s=round(stats.turns / elapsed, 3) if elapsed > 0 else 0.0,
        status_callbacks={"ok": status["ok"], "failed": status["failed"]},
        errors=dict(stats.errors.most_common(10)),
        histogram=stats.latency,
        corrected_histogram=stats.corrected,
        samples=stats.samples,
        marker_counts={m: stats.marker_counts[m] for m in config.markers},
        marked=stats.marked,
        relay_stats=relay,
    )
