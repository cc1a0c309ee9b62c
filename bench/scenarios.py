"""The pipeline measurements, each on its own stack (devstack: Redis, botsim, workers, the edge
under gunicorn), driven through callsim from bench.loadgen."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis as sync_redis

from bench import loadgen, procs
from bench.sizes import Sizes
from devstack.processes import wait_until
from devstack.stack import Stack, StackConfig
from shared import keys

BAD_TURNS = ("reprompt_late", "trouble", "error")
BAD_CALLS = ("error", "invalid_twiml", "cancelled", "crashed")


@contextmanager
def running(config: StackConfig) -> Iterator[Stack]:
    stack = Stack(config)
    try:
        stack.start()
    except Exception:
        print(stack.logs())
        raise
    try:
        yield stack
    finally:
        stack.stop()


def load_on(
    stack: Stack,
    calls: int,
    think_time_s: float,
    duration_s: float,
    *,
    shards: int = 1,
    warmup_s: float = 0.0,
    ramp_up_s: float = 0.0,
) -> loadgen.Load:
    return loadgen.Load(
        url=f"{stack.edge_url}/twilio/voice",
        status_url=f"{stack.edge_url}/twilio/status",
        account_sid=stack.config.account_sid,
        auth_token=stack.config.auth_token,
        calls=calls,
        think_time_s=think_time_s,
        duration_s=duration_s,
        shards=shards,
        warmup_s=warmup_s,
        ramp_up_s=ramp_up_s,
    )


def bad(result: loadgen.LoadResult) -> int:
    return sum(result.turn_outcomes.get(k, 0) for k in BAD_TURNS) + sum(
        result.call_outcomes.get(k, 0) for k in BAD_CALLS
    )


def warm_up(stack: Stack) -> None:
    """First calls pay for imports, connections and Botpress users; not measured."""
    loadgen.run(load_on(stack, 5, 0.05, 2.0))


class CpuMeter:
    """CPU share (100 = one core) of each piece of the stack over a measurement."""

    def __init__(self, stack: Stack) -> None:
        self._pids = {
            "edge": stack.edge,
            "botsim": stack.botsim,
            "redis": stack.redis,
            **{w.name: w for w in stack.workers},
        }
        self._t0 = time.monotonic()
        self._cpu0 = self._sample()

    def _sample(self) -> dict[str, float]:
        return {name: procs.tree_cpu_s(m.proc.pid) for name, m in self._pids.items() if m}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        cpu1 = self._sample()
        return {k: round(100 * (cpu1[k] - self._cpu0[k]) / wall, 1) for k in cpu1}


class RssPeak:
    """The highest VmRSS of a process tree seen while a load runs."""

    def __init__(self, pid: int, kb: int) -> None:
        self.pid, self.kb = pid, kb

    def sample(self, _load_pids: list[int]) -> None:
        self.kb = max(self.kb, procs.tree_rss_kb(self.pid))


def summary(result: loadgen.LoadResult, **extra: Any) -> dict[str, Any]:
    return {**result.summary(), **extra}


# -- instant bot: latency at 1/50/200 callers, and the most turns/s -----------------------------
def instant_pipeline(sizes: Sizes, edge_workers: int, workers: int) -> dict[str, Any]:
    config = StackConfig(
        edge_workers=edge_workers, workers=workers, worker_env={"BOT_QUIET_MS": "0"}
    )
    out: dict[str, Any] = {"latency": {}, "throughput": {}}
    with running(config) as stack:
        warm_up(stack)
        for callers in sizes.latency_callers:
            think = sizes.one_caller_think_s if callers == 1 else sizes.think_s
            shards = 1 if callers <= 50 else 2
            result = loadgen.run(
                load_on(
                    stack,
                    callers,
                    think,
                    sizes.latency_duration_s,
                    shards=shards,
                    ramp_up_s=min(think, 1.0),
                )
            )
            out["latency"][str(callers)] = summary(result, think_time_s=think)
        for callers in sizes.throughput_callers:
            for shards in sizes.throughput_shards:
                meter = CpuMeter(stack)
                result = loadgen.run(
                    load_on(
                        stack,
                        callers,
                        0.0,
                        sizes.throughput_duration_s,
                        shards=shards,
                        warmup_s=sizes.throughput_warmup_s,
                    )
                )
                out["throughput"][f"{callers}x{shards}"] = summary(
                    result, callers=callers, cpu_pct=meter.stop()
                )
    return out


# -- holding: calls held with a 1 s bot and a turn every ~8 s, in steps ---------------------------
def holding(sizes: Sizes, turns_per_s: float, edge_workers: int, workers: int) -> dict[str, Any]:
    config = StackConfig(
        edge_workers=edge_workers,
        workers=workers,
        botsim_args=("--latency-ms", str(sizes.hold_bot_ms)),
        worker_env={"BOT_QUIET_MS": "0"},
    )
    think = sizes.hold_period_s - sizes.hold_bot_ms / 1000
    unit = max(turns_per_s * sizes.hold_period_s, 10.0)
    steps = sorted({min(sizes.hold_cap, max(2, round(unit * f))) for f in sizes.hold_steps})
    out: dict[str, Any] = {"steps": [], "largest_clean": 0, "capped": False}
    with running(config) as stack:
        assert stack.edge is not None
        warm_up(stack)
        base_kb = procs.tree_rss_kb(stack.edge.proc.pid)
        out["edge_rss_before_kb"] = base_kb
        for calls in steps:
            peak = RssPeak(stack.edge.proc.pid, base_kb)
            result = loadgen.run(
                load_on(
                    stack,
                    calls,
                    think,
                    sizes.hold_duration_s,
                    shards=math.ceil(calls / sizes.hold_calls_per_shard),
                    ramp_up_s=sizes.hold_period_s,
                ),
                on_tick=peak.sample,
            )
            misses = bad(result)
            step = summary(
                result,
                think_time_s=think,
                misses=misses,
                edge_rss_peak_kb=peak.kb,
                edge_kb_per_call=round((peak.kb - base_kb) / calls, 2),
            )
            out["steps"].append(step)
            if misses:
                # Past the clean limit requests queue up in the edge; keep that figure apart.
                out["edge_kb_per_call_first_miss"] = step["edge_kb_per_call"]
                break
            # Memory per held call: at the most calls held without a missed deadline.
            out["edge_kb_per_call"] = step["edge_kb_per_call"]
            out["largest_clean"] = calls
        else:
            out["capped"] = steps[-1] >= sizes.hold_cap
    return out


# -- scaling: a slow bot, 1/2/4 workers ---------------------------------------------------------
def _wait_alive(stack: Stack, names: list[str]) -> None:
    client = sync_redis.Redis.from_url(stack.redis_url)
    try:
        wait_until(
            lambda: all(client.exists(keys.worker_alive(n)) for n in names),
            30,
            "new workers' heartbeat",
        )
    finally:
        client.close()


def scaling(sizes: Sizes, edge_workers: int) -> dict[str, Any]:
    config = StackConfig(
        edge_workers=edge_workers,
        workers=sizes.scale_workers[0],
        botsim_args=("--latency-ms", str(sizes.scale_bot_ms)),
        edge_env={"REPLY_DEADLINE_MS": str(sizes.scale_deadline_ms)},
        worker_env={"BOT_QUIET_MS": "0", "WORKER_CONCURRENCY": str(sizes.scale_concurrency)},
    )
    out: dict[str, Any] = {"capacity": {}, "runs": {}}
    with running(config) as stack:
        warm_up(stack)
        for count in sizes.scale_workers:
            while len(stack.workers) < count:
                stack.start_worker()
            _wait_alive(stack, [w.name for w in stack.workers])
            result = loadgen.run(
                load_on(
                    stack,
                    sizes.scale_callers,
                    0.0,
                    sizes.scale_duration_s,
                    warmup_s=sizes.scale_warmup_s,
                )
            )
            out["runs"][str(count)] = summary(result, misses=bad(result))
            out["capacity"][str(count)] = result.window_turns_per_s
    out["ideal_per_worker"] = round(sizes.scale_concurrency / (sizes.scale_bot_ms / 1000), 2)
    return out


# -- deadline precision: every turn is late --------------------------------------------------
def deadline_precision(sizes: Sizes, edge_workers: int) -> dict[str, Any]:
    config = StackConfig(
        edge_workers=edge_workers,
        workers=1,
        botsim_args=("--latency-ms", str(sizes.late_bot_ms)),
        edge_env={"REPLY_DEADLINE_MS": str(sizes.late_deadline_ms)},
        worker_env={"BOT_QUIET_MS": "0"},
    )
    with running(config) as stack:
        result = loadgen.run(
            load_on(stack, sizes.late_callers, 0.5, sizes.late_duration_s, ramp_up_s=1.0)
        )
    over = sorted(
        ms - sizes.late_deadline_ms for _, ms, o in result.samples if o == "reprompt_late"
    )

    def pct(p: float) -> float:
        return round(over[min(len(over) - 1, int(p / 100 * len(over)))], 3) if over else 0.0

    return {
        "deadline_ms": sizes.late_deadline_ms,
        "bot_ms": sizes.late_bot_ms,
        "late_turns": len(over),
        "over_deadline_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": round(over[-1], 3) if over else 0.0,
            "min": round(over[0], 3) if over else 0.0,
        },
        "run": summary(result),
    }
