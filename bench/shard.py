"""One load-generator process: `python -m bench.shard SPEC.json OUT.json`.

Runs callsim's run_load (latency from each turn's scheduled send time) starting at the spec's
wall-clock `start_at_unix`, so that several shards run side by side, and writes the merged
report plus its own CPU use (is the generator saturated?). A call whose TwiML connects a
ConversationRelay (relay mode) is played as a relay session by run_load: its talk cycles and
protocol counts go in the report's `relay` (merge_relay).

The calls are split into groups of at most `group_calls`, one run_load (so one aiohttp session
and connection pool) per group, all at once. The split dates from an HTTP client whose pool
scanned every connection on each request and each response (measured: 86% of the generator's
CPU at 200 connections); aiohttp's pool does not (a connection is taken from and returned to a
per-host queue), so the split costs nothing and is kept to run the load exactly as before.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
import time
from collections import Counter
from typing import Any

from callsim.load import LoadConfig, LoadReport, run_load
from callsim.stats import RelayStats, new_histogram

CONFIG_FIELDS = (
    "url",
    "account_sid",
    "auth_token",
    "ramp_up_s",
    "turns",
    "think_time_s",
    "duration_s",
    "public_url",
    "status_url",
    "webhook_timeout_s",
)
DEFAULT_GROUP_CALLS = 10


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    calls = int(spec["calls"])
    groups = math.ceil(calls / int(spec.get("group_calls", DEFAULT_GROUP_CALLS)))
    configs = [
        LoadConfig(
            calls=calls // groups + (1 if g < calls % groups else 0),
            script=tuple(spec.get("script", ["hello"])),
            markers=tuple(spec.get("markers", ())),
            **{k: spec[k] for k in CONFIG_FIELDS if k in spec},
        )
        for g in range(groups)
    ]
    delay = spec.get("start_at_unix", 0.0) - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    cpu0, wall0 = cpu_s(), time.time()
    reports = await asyncio.gather(*(run_load(c) for c in configs))
    out = merge(reports)
    out["cpu_s"] = round(cpu_s() - cpu0, 3)
    out["started_unix"] = wall0
    return out


def merge(reports: list[LoadReport]) -> dict[str, Any]:
    histogram = new_histogram()
    outcomes: Counter[str] = Counter()
    call_outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    samples: list[tuple[float, float, str]] = []
    marked: list[tuple[float, float, str, list[int]]] = []
    for r in reports:
        histogram.add(r.histogram)
        outcomes.update(r.turn_outcomes)
        call_outcomes.update(r.call_outcomes)
        errors.update(r.errors)
        samples.extend((round(t, 4), round(ms, 3), o) for t, ms, o in r.samples)
        marked.extend((round(t, 4), round(ms, 3), o, list(q)) for t, ms, o, q in r.marked)
    return {
        "elapsed_s": max(r.elapsed_s for r in reports),
        "turn_outcomes": dict(outcomes),
        "call_outcomes": dict(call_outcomes),
        "errors": dict(errors),
        "hdr": {"latency_us": histogram.encode().decode()},
        "samples": samples,
        "marked": marked,
        "relay": merge_relay([r.relay_stats for r in reports if r.met_relay]),
    }


#: RelayStats' counters, summed over the groups (and by bench.loadgen over the shards).
RELAY_COUNTS = (
    "cycles",
    "interrupted",
    "tokens_after_interrupt",
    "tokens_in_flight_at_interrupt",
    "interrupts",
    "barge_ins_missed",
)
RELAY_COUNTERS = ("triggers", "sessions", "protocol_errors", "errors")


def merge_relay(stats: list[RelayStats | None]) -> dict[str, Any] | None:
    """The relay talk cycles of every group: counts, counters, HDR histograms (first token and
    cycle end, from each trigger's scheduled time) and the (t_s, first token ms, cycle end ms,
    trigger) samples; None when no call met a ConversationRelay."""
    found = [s for s in stats if s is not None]
    if not found:
        return None
    first, end = new_histogram(), new_histogram()
    counters: dict[str, Counter[str]] = {k: Counter() for k in RELAY_COUNTERS}
    samples: list[tuple[float, float, float | None, str]] = []
    for s in found:
        first.add(s.first_token)
        end.add(s.cycle_end)
        for k in RELAY_COUNTERS:
            counters[k].update(getattr(s, k))
        samples.extend(
            (round(t, 4), round(f, 3), None if e is None else round(e, 3), trig)
            for t, f, e, trig in s.samples
        )
    return {
        **{k: sum(getattr(s, k) for s in found) for k in RELAY_COUNTS},
        **{k: dict(c) for k, c in counters.items()},
        "hdr": {
            "first_token_us": first.encode().decode(),
            "cycle_end_us": end.encode().decode(),
        },
        "samples": samples,
    }


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    result = asyncio.run(run(spec))
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
