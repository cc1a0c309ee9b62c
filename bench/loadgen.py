"""Load through callsim, from one or several generator processes, merged into one result.

A single Python process tops out long before a fast server does, so a load can be split over
`shards` processes (bench.shard), all starting at the same wall-clock instant; their HDR
histograms are merged, and throughput is counted over a steady window (after warm-up, before
callers start hanging up) from every turn's completion time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from bench.shard import RELAY_COUNTERS, RELAY_COUNTS
from callsim.stats import new_histogram, percentiles_ms

START_DELAY_S = 1.5  # time for every shard process to import and get ready


@dataclass
class Load:
    url: str
    account_sid: str
    auth_token: str
    calls: int
    think_time_s: float
    duration_s: float
    ramp_up_s: float = 0.0
    turns: int = 10_000
    status_url: str | None = None
    script: tuple[str, ...] = ("hello",)
    shards: int = 1
    warmup_s: float = 0.0  # throughput window: [warmup_s, duration_s] after the start
    webhook_timeout_s: float = 15.0
    markers: tuple[str, ...] = ()  # texts looked for in each turn's speech (LoadResult.marked)


@dataclass
class LoadResult:
    calls: int
    shards: int
    elapsed_s: float
    turns: int
    turn_outcomes: dict[str, int]
    call_outcomes: dict[str, int]
    errors: dict[str, int]
    latency_ms: dict[str, float]
    window_s: float
    window_turns_per_s: float  # answered turns completed per second in the steady window
    generator_cpu_pct: list[float]  # each shard's CPU use over its run (100 = one core)
    histogram: HdrHistogram = field(repr=False)
    # (completion time from the common start, latency ms, outcome) of every turn
    samples: list[tuple[float, float, str]] = field(repr=False)
    # with markers: (scheduled time from the common start, latency ms, outcome, the indices of
    # the markers its answer said, in order) of every turn, in scheduled order
    marked: list[tuple[float, float, str, list[int]]] = field(repr=False, default_factory=list)
    # Relay mode (the calls met a ConversationRelay): the talk cycles' counts and percentiles
    # (relay_summary), or None
    relay: dict[str, Any] | None = None
    # ...and (scheduled time from the common start, first token ms, cycle end ms or None,
    # trigger) of every talk cycle
    relay_samples: list[tuple[float, float, float | None, str]] = field(
        repr=False, default_factory=list
    )

    def summary(self) -> dict[str, Any]:
        hidden = ("histogram", "samples", "marked", "relay_samples")
        return {k: v for k, v in self.__dict__.items() if k not in hidden}


def run(
    load: Load, on_tick: Callable[[list[int]], None] | None = None, tick_s: float = 0.5
) -> LoadResult:
    """Run the load to the end (bounded: run_load's own time limit, plus a margin here)."""
    shards = max(1, min(load.shards, load.calls))
    start = time.time() + START_DELAY_S
    tmp = tempfile.mkdtemp(prefix="bench-load-")
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    for k in range(shards):
        calls = load.calls // shards + (1 if k < load.calls % shards else 0)
        spec = {
            "url": load.url,
            "account_sid": load.account_sid,
            "auth_token": load.auth_token,
            "calls": calls,
            "ramp_up_s": load.ramp_up_s,
            "turns": load.turns,
            "think_time_s": load.think_time_s,
            "duration_s": load.duration_s,
            "status_url": load.status_url,
            "script": list(load.script),
            "webhook_timeout_s": load.webhook_timeout_s,
            "markers": list(load.markers),
            "start_at_unix": start,
        }
        spec_path, out_path = os.path.join(tmp, f"spec{k}.json"), os.path.join(tmp, f"out{k}.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.shard", spec_path, out_path], stdin=subprocess.DEVNULL
        )
        procs.append((proc, out_path))
    # run_load cancels its calls past duration + one webhook timeout + its margin.
    give_up = start + load.duration_s + load.think_time_s + load.webhook_timeout_s + 30
    try:
        while any(p.poll() is None for p, _ in procs):
            if time.time() > give_up:
                raise RuntimeError("load generator overran its time limit")
            if on_tick is not None and time.time() >= start:
                on_tick([p.pid for p, _ in procs])
            time.sleep(tick_s)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    reports = []
    for p, out_path in procs:
        if p.returncode != 0:
            raise RuntimeError(f"load generator exited with {p.returncode}")
        with open(out_path, encoding="utf-8") as f:
            reports.append(json.load(f))
    return _merge(load, shards, start, reports)


def _merge(load: Load, shards: int, start: float, reports: list[dict[str, Any]]) -> LoadResult:
    histogram = new_histogram()
    outcomes: Counter[str] = Counter()
    call_outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    samples: list[tuple[float, float, str]] = []
    marked: list[tuple[float, float, str, list[int]]] = []
    cpu_pct = []
    elapsed = 0.0
    relay = _merge_relay(start, [r for r in reports if r.get("relay")])
    for r in reports:
        histogram.decode_and_add(r["hdr"]["latency_us"])
        outcomes.update(r["turn_outcomes"])
        call_outcomes.update(r["call_outcomes"])
        errors.update(r["errors"])
        offset = r["started_unix"] - start
        samples.extend((offset + t + ms / 1000.0, ms, o) for t, ms, o in r["samples"])
        marked.extend((offset + t, ms, o, list(q)) for t, ms, o, q in r.get("marked", []))
        cpu_pct.append(round(100.0 * r["cpu_s"] / max(r["elapsed_s"], 1e-9), 1))
        elapsed = max(elapsed, offset + r["elapsed_s"])
    window_end = load.duration_s
    window = max(window_end - load.warmup_s, 1e-9)
    in_window = sum(
        1 for done, _, o in samples if o == "answered" and load.warmup_s <= done < window_end
    )
    latency = percentiles_ms(histogram)
    return LoadResult(
        calls=load.calls,
        shards=shards,
        elapsed_s=round(elapsed, 3),
        turns=sum(outcomes.values()),
        turn_outcomes=dict(outcomes),
        call_outcomes=dict(call_outcomes),
        errors=dict(errors.most_common(5)),
        latency_ms={k: round(v, 3) for k, v in latency.items()},
        window_s=round(window, 3),
        window_turns_per_s=round(in_window / window, 2),
        generator_cpu_pct=cpu_pct,
        histogram=histogram,
        samples=samples,
        marked=sorted(marked, key=lambda m: m[0]),
        relay=None if relay is None else relay[0],
        relay_samples=[] if relay is None else relay[1],
    )


def _merge_relay(
    start: float, reports: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[tuple[float, float, float | None, str]]] | None:
    """Each shard's `relay` (bench.shard.merge_relay) summed: the summary and the samples."""
    if not reports:
        return None
    first, end = new_histogram(), new_histogram()
    counts: Counter[str] = Counter()
    counters: dict[str, Counter[str]] = {k: Counter() for k in RELAY_COUNTERS}
    samples: list[tuple[float, float, float | None, str]] = []
    for r in reports:
        relay = r["relay"]
        first.decode_and_add(relay["hdr"]["first_token_us"])
        end.decode_and_add(relay["hdr"]["cycle_end_us"])
        counts.update({k: relay[k] for k in RELAY_COUNTS})
        for k in RELAY_COUNTERS:
            counters[k].update(relay[k])
        offset = r["started_unix"] - start
        samples.extend((offset + t, f, e, trig) for t, f, e, trig in relay["samples"])
    summary = {
        **{k: counts[k] for k in RELAY_COUNTS},
        **{k: dict(c) for k, c in counters.items() if k != "protocol_errors"},
        "protocol_errors": sum(counters["protocol_errors"].values()),
        "protocol_error_reasons": dict(counters["protocol_errors"]),
        "first_token_ms": {k: round(v, 3) for k, v in percentiles_ms(first).items()},
        "cycle_end_ms": {k: round(v, 3) for k, v in percentiles_ms(end).items()},
    }
    return summary, sorted(samples, key=lambda s: s[0])
