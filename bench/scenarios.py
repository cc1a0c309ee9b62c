"""The pipeline measurements, each on its own stack (devstack: Redis, botsim, workers, the edge
under gunicorn), driven through callsim from bench.loadgen.

Every stack runs the workers at their default settings (no BOT_QUIET_MS: the install's own
end-of-turn rule), unless a result says otherwise: its "settings" and "worker_env" name every
override. "window 0" (BOT_QUIET_MS=0: the reply goes out at the bot's first message) is measured
beside the default where the comparison helps."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis as sync_redis

import botsim
from bench import loadgen, procs
from bench.sizes import Sizes
from devstack.processes import wait_until
from devstack.stack import Stack, StackConfig
from shared import keys

BAD_TURNS = ("reprompt_late", "trouble", "error")
BAD_CALLS = ("error", "invalid_twiml", "cancelled", "crashed")
WINDOW_0 = {"BOT_QUIET_MS": "0"}
SCENARIOS = Path(botsim.__file__).resolve().parent / "scenarios"
# The learned quiet window is shared through Redis and refreshed every couple of seconds: a
# pause after the warm-up lets every worker pick up what it learned (plus loadgen's start delay).
WINDOW_SYNC_PAUSE_S = 1.0


def settings_label(worker_env: dict[str, str]) -> str:
    """What the figures' labels say: "default", "window 0", or the overrides."""
    if worker_env == WINDOW_0:
        return "window 0"
    return ", ".join(f"{k}={v}" for k, v in sorted(worker_env.items())) or "default"


def settings(worker_env: dict[str, str]) -> dict[str, Any]:
    return {"settings": settings_label(worker_env), "worker_env": dict(worker_env)}


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
    markers: tuple[str, ...] = (),
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
        markers=markers,
    )


def bad(result: loadgen.LoadResult) -> int:
    return sum(result.turn_outcomes.get(k, 0) for k in BAD_TURNS) + sum(
        result.call_outcomes.get(k, 0) for k in BAD_CALLS
    )


def warm_up(stack: Stack, sizes: Sizes, bot_ms: float = 0.0) -> None:
    """First calls pay for imports, connections and Botpress users, and give the default quiet
    window (learned per bot from the turns it sees) some thirty turns to learn from; not
    measured. Sizes.warm_up_s 0 (the smoke): none."""
    if not sizes.warm_up_s:
        return
    loadgen.run(load_on(stack, 10, 0.05, max(sizes.warm_up_s, 3 * (bot_ms / 1000 + 0.05) + 0.5)))
    time.sleep(WINDOW_SYNC_PAUSE_S)


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
def _instant(
    sizes: Sizes,
    edge_workers: int,
    workers: int,
    worker_env: dict[str, str],
    latency_callers: Sequence[int],
    throughput: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    config = StackConfig(edge_workers=edge_workers, workers=workers, worker_env=worker_env)
    out: dict[str, Any] = {**settings(worker_env), "latency": {}, "throughput": {}}
    with running(config) as stack:
        warm_up(stack, sizes)
        for callers in latency_callers:
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
        for callers, shards in throughput:
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


def instant_pipeline(sizes: Sizes, edge_workers: int, workers: int) -> dict[str, Any]:
    """Everything at default settings; then, on a stack of its own, "window 0": the 1-caller
    latency and the largest throughput run again with BOT_QUIET_MS=0."""
    out = _instant(
        sizes,
        edge_workers,
        workers,
        {},
        sizes.latency_callers,
        [(c, s) for c in sizes.throughput_callers for s in sizes.throughput_shards],
    )
    out["window_0"] = _instant(
        sizes,
        edge_workers,
        workers,
        WINDOW_0,
        sizes.latency_callers[:1],
        [(max(sizes.throughput_callers), max(sizes.throughput_shards))]
        if sizes.window0_throughput
        else [],
    )
    return out


# -- bot mix: one message, two messages 100 ms apart, a question; 1 caller, default settings ---
MARKERS = ("part one", "part two")  # botsim/scenarios/two_messages.json, each turn's 2 messages
MIX: tuple[tuple[str, str | None], ...] = (
    ("one", None),  # botsim's default echo bot: one text message per turn
    ("two", "two_messages.json"),
    ("question", "question.json"),  # a choice payload ("... Tea or coffee?") per turn
)


def pcts(values: Sequence[float]) -> dict[str, float]:
    """Nearest-rank percentiles of a few hundred values (ms)."""
    v = sorted(values)
    if not v:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "count": 0}

    def at(p: float) -> float:
        return round(v[min(len(v) - 1, int(p / 100 * len(v)))], 3)

    return {"p50": at(50), "p90": at(90), "p99": at(99), "max": round(v[-1], 3), "count": len(v)}


def _both(turns: Sequence[tuple[float, float, str, list[int]]]) -> dict[str, Any]:
    """Turns whose own answer said both messages: a "part two" after its last "part one" (a
    late "part two" of an earlier turn is spoken first, before the turn's own messages)."""
    both = 0
    for _, _, _, seq in turns:
        if 0 in seq and 1 in seq[len(seq) - seq[::-1].index(0) :]:
            both += 1
    n = len(turns)
    return {"turns": n, "both": both, "share_pct": round(100 * both / n, 2) if n else None}


def two_message_figures(result: loadgen.LoadResult, learn_turns: int) -> dict[str, Any]:
    marked = result.marked  # in the order the turns were sent: the bot's turn order at 1 caller
    first, sent = sum(q.count(0) for *_, q in marked), sum(q.count(1) for *_, q in marked)
    # The last turn's own second message, if not in its answer, had no later answer to go in.
    last = marked[-1][3] if marked else []
    pending = 1 if 0 in last and 1 not in last[len(last) - last[::-1].index(0) :] else 0
    expected = first - pending
    spoken = min(sent, expected)
    return {
        "markers": list(MARKERS),
        "first_turns": _both(marked[:learn_turns]),
        "learned": _both(marked[learn_turns:]),
        # a second message that missed its turn's answer and was spoken at a later one
        "second_in_later_answer": sum(
            q[: q.index(0)].count(1) if 0 in q else q.count(1) for *_, q in marked
        ),
        "first_messages_said": first,
        "second_messages_said": sent,
        "second_messages_expected": expected,
        "second_messages_lost": expected - spoken,
        "second_spoken_pct": round(100 * spoken / expected, 2) if expected else None,
    }


def logged_windows(stack: Stack) -> dict[str, str | None]:
    """For reference, the last learned quiet window each worker logged ("quiet window now N ms
    (K samples)", worker/end_of_turn.py), or None: read from the logs, best effort."""
    out: dict[str, str | None] = {}
    for worker in stack.workers:
        last = None
        for text in worker.log_tail(5000).splitlines():
            try:
                msg = json.loads(text).get("msg", "")
            except (ValueError, AttributeError):
                continue
            if isinstance(msg, str) and msg.startswith("quiet window now "):
                last = msg.removeprefix("quiet window now ")
        out[worker.name] = last
    return out


def bot_mix(sizes: Sizes, edge_workers: int, workers: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        **settings({}),
        "callers": 1,
        "think_time_s": sizes.mix_think_s,
        "learn_turns": sizes.mix_learn_turns,
        "bots": {},
    }
    for name, scenario in MIX:
        args = () if scenario is None else ("--scenario", str(SCENARIOS / scenario))
        config = StackConfig(edge_workers=edge_workers, workers=workers, botsim_args=args)
        duration = sizes.mix_two_duration_s if name == "two" else sizes.mix_duration_s
        markers = MARKERS if name == "two" else ()
        with running(config) as stack:
            # No warm-up: the bot's first turns are the learning ones, reported apart.
            result = loadgen.run(
                load_on(stack, 1, sizes.mix_think_s, duration, ramp_up_s=0.0, markers=markers)
            )
            windows = logged_windows(stack)
        ms = [m for _, m, _ in sorted(result.samples)]
        n = sizes.mix_learn_turns
        bot: dict[str, Any] = {
            "scenario": scenario or "echo (botsim's default bot)",
            "duration_s": duration,
            "latency_ms": pcts(ms[n:]),  # once learned: after the first learn_turns turns
            "first_turns_latency_ms": pcts(ms[:n]),
            "quiet_window_logged": windows,
            "run": summary(result, misses=bad(result)),
        }
        if markers:
            bot["two_messages"] = two_message_figures(result, n)
        out["bots"][name] = bot
    return out


# -- holding: calls held with a 1 s bot and a turn every ~8 s, in steps ---------------------------
def holding(
    sizes: Sizes,
    turns_per_s: float,
    edge_workers: int,
    workers: int,
    edge_env: dict[str, str] | None = None,
    misses_of: Callable[[loadgen.LoadResult], int] = bad,
) -> dict[str, Any]:
    """Gather mode by default; relay mode (bench.relay) passes its VOICE_MODE and what counts
    as a missed deadline in a relay session."""
    config = StackConfig(
        edge_workers=edge_workers,
        workers=workers,
        botsim_args=("--latency-ms", str(sizes.hold_bot_ms)),
        edge_env=dict(edge_env or {}),
    )
    think = sizes.hold_period_s - sizes.hold_bot_ms / 1000
    unit = max(turns_per_s * sizes.hold_period_s, 10.0)
    steps = sorted({min(sizes.hold_cap, max(2, round(unit * f))) for f in sizes.hold_steps})
    out: dict[str, Any] = {
        **settings(config.worker_env),
        "edge_env": dict(config.edge_env),
        "steps": [],
        "largest_clean": 0,
        "capped": False,
    }
    with running(config) as stack:
        assert stack.edge is not None
        warm_up(stack, sizes, sizes.hold_bot_ms)
        base_kb = procs.tree_rss_kb(stack.edge.proc.pid)
        out["edge_rss_before_kb"] = base_kb
        for calls in steps:
            peak = RssPeak(stack.edge.proc.pid, base_kb)
            meter = CpuMeter(stack)
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
            misses = misses_of(result)
            step = summary(
                result,
                think_time_s=think,
                misses=misses,
                edge_rss_peak_kb=peak.kb,
                edge_kb_per_call=round((peak.kb - base_kb) / calls, 2),
                # Where the box's two cores went: past the clean limit it is the box, not
                # the edge, that runs out (the profile behind the relay/gather comparison).
                cpu_pct=meter.stop(),
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
        worker_env={"WORKER_CONCURRENCY": str(sizes.scale_concurrency)},
    )
    out: dict[str, Any] = {**settings(config.worker_env), "capacity": {}, "runs": {}}
    with running(config) as stack:
        warm_up(stack, sizes, sizes.scale_bot_ms)
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
        **settings(config.worker_env),
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


# -- overload: goodput (turns answered in their own webhook) as offered load passes the knee -----
def overload(sizes: Sizes, edge_workers: int) -> dict[str, Any]:
    """A slow bot and few slots, so that the knee (workers x WORKER_CONCURRENCY / bot latency
    turns/s) is reached with a few hundred calls on a small box; one fresh stack per step (no
    backlog left by the step before). Goodput counts the turns whose own webhook spoke the bot's
    reply, not the hold phrase."""
    bot_s = sizes.overload_bot_ms / 1000
    period = sizes.overload_think_s + bot_s  # a turn per call every period s, when answered
    knee = sizes.overload_workers * sizes.overload_concurrency / bot_s
    worker_env = {"WORKER_CONCURRENCY": str(sizes.overload_concurrency)}
    edge_env = (
        {"REPLY_DEADLINE_MS": str(sizes.overload_deadline_ms)} if sizes.overload_deadline_ms else {}
    )
    window_s = sizes.overload_duration_s - sizes.overload_warmup_s
    out: dict[str, Any] = {
        **settings(worker_env),
        "workers": sizes.overload_workers,
        "concurrency": sizes.overload_concurrency,
        "bot_ms": sizes.overload_bot_ms,
        "think_time_s": sizes.overload_think_s,
        "ramp_up_s": sizes.overload_ramp_s,
        "deadline_ms": sizes.overload_deadline_ms or "edge default",
        "knee_turns_per_s": round(knee, 2),
        "knee_calls": round(knee * period),
        "window_s": window_s,
        "steps": [],
    }
    for factor in sizes.overload_steps:
        calls = max(1, round(factor * knee * period))
        config = StackConfig(
            edge_workers=edge_workers,
            workers=sizes.overload_workers,
            botsim_args=("--latency-ms", str(sizes.overload_bot_ms)),
            edge_env=edge_env,
            worker_env=worker_env,
        )
        with running(config) as stack:
            warm_up(stack, sizes, sizes.overload_bot_ms)
            result = loadgen.run(
                load_on(
                    stack,
                    calls,
                    sizes.overload_think_s,
                    sizes.overload_duration_s,
                    shards=math.ceil(calls / sizes.hold_calls_per_shard),
                    ramp_up_s=sizes.overload_ramp_s,
                    warmup_s=sizes.overload_warmup_s,
                )
            )
        lo, hi = sizes.overload_warmup_s, sizes.overload_duration_s
        done = [(t, ms, o) for t, ms, o in result.samples if lo <= t < hi]
        sent = sum(1 for t, ms, _ in result.samples if lo <= t - ms / 1000 < hi)
        answered = [ms for _, ms, o in done if o == "answered"]
        held = sum(1 for *_, o in done if o == "reprompt_late")
        out["steps"].append(
            {
                "factor": factor,
                "calls": calls,
                "offered_nominal_turns_per_s": round(calls / period, 2),
                "offered_turns_per_s": round(sent / window_s, 2),
                "goodput_turns_per_s": round(len(answered) / window_s, 2),
                "hold_share_pct": round(100 * held / len(done), 2) if done else None,
                "turns_in_window": len(done),
                "answered_latency_ms": pcts(answered),
                "run": summary(result, misses=bad(result)),
            }
        )
    return out
