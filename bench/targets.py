"""The targets of docs/architecture.md, "How fast, and how we know": each a ratio between figures
of the same run, and the printed table.

Figures are at the workers' default settings unless labelled "window 0" (BOT_QUIET_MS=0) or with
the override they ran with (bench/scenarios.py). Relay figures (bench/relay.py) come from stacks
whose edge runs VOICE_MODE=relay and is otherwise the same."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Target:
    name: str
    figure: float | None  # what was measured
    unit: str
    limit: float | None  # what the target asks of that figure, from the same run's floors
    at_most: bool  # True: figure <= limit passes
    how: str  # the formula, in words

    @property
    def ratio(self) -> float | None:
        if self.figure is None or not self.limit:
            return None
        return self.figure / self.limit

    @property
    def verdict(self) -> str:
        if self.at_most and self.limit == 0 and self.figure is not None:
            return "PASS" if self.figure <= 0 else "MISS"  # "none": no ratio to speak of
        if self.ratio is None:
            return "n/a"
        return "PASS" if (self.ratio <= 1.0 if self.at_most else self.ratio >= 1.0) else "MISS"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "verdict": self.verdict}


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def floor_sum_ms(floors: dict[str, Any]) -> float | None:
    """HTTP in + Redis write + Redis read + 2 bot round trips + the gRPC reply (p50 each)."""
    parts = [
        _get(floors, "http", "latency", "1", "latency_ms", "p50"),
        _get(floors, "hops", "redis", "write_ms", "p50"),
        _get(floors, "hops", "redis", "read_ms", "p50"),
        _get(floors, "hops", "bot", "post_message_ms", "p50"),
        _get(floors, "hops", "bot", "post_message_ms", "p50"),
        _get(floors, "hops", "grpc", "deliver_ms", "p50"),
    ]
    return None if any(p is None for p in parts) else round(sum(parts), 4)


def hops_of(results: dict[str, Any]) -> dict[str, Any]:
    """The Redis, bot and gRPC floors: the floors part's, else relay_floors' own."""
    return _get(results, "floors", "hops") or _get(results, "relay_floors", "hops") or {}


def relay_floor_sum_ms(results: dict[str, Any]) -> float | None:
    """WebSocket frame in + out (one echo round trip) + Redis write + Redis read + the bot's
    POST and its listen-stream push (2 bot round trips, as gather's sum) + the gRPC part."""
    hops = hops_of(results)
    parts = [
        _get(results, "relay_floors", "ws", "round_trip_ms", "p50"),
        _get(hops, "redis", "write_ms", "p50"),
        _get(hops, "redis", "read_ms", "p50"),
        _get(hops, "bot", "post_message_ms", "p50"),
        _get(hops, "bot", "post_message_ms", "p50"),
        _get(hops, "grpc", "deliver_ms", "p50"),
    ]
    return None if any(p is None for p in parts) else round(sum(parts), 4)


def best_throughput(runs: dict[str, Any]) -> tuple[float, int] | None:
    """The most answered turns/s of any run, and at how many callers."""
    if not runs:
        return None
    best = max(runs.values(), key=lambda r: r["window_turns_per_s"])
    return best["window_turns_per_s"], best["calls"]


def overload_step(overload: dict[str, Any], factor: float) -> dict[str, Any] | None:
    return next((s for s in overload.get("steps", []) if s["factor"] == factor), None)


def evaluate(results: dict[str, Any]) -> list[Target]:
    floors = results.get("floors") or {}
    pipeline = results.get("pipeline") or {}
    botmix = results.get("botmix") or {}
    holding = results.get("holding") or {}
    scaling = results.get("scaling") or {}
    deadline = results.get("deadline") or {}
    overload = results.get("overload") or {}
    out = []

    floor_ms = floor_sum_ms(floors)
    p50_one = _get(pipeline, "latency", "1", "latency_ms", "p50")
    out.append(
        Target(
            "latency: p50 at 1 caller, default settings",
            p50_one,
            "ms",
            None if floor_ms is None else 1.25 * floor_ms,
            True,
            f"<= 1.25 x floor sum ({floor_ms} ms); instant one-message bot",
        )
    )
    bots = botmix.get("bots") or {}
    one_p50 = _get(bots, "one", "latency_ms", "p50")
    out.append(
        Target(
            "bot mix: question bot p50, 1 caller",
            _get(bots, "question", "latency_ms", "p50"),
            "ms",
            None if one_p50 is None else one_p50 + 2.0,
            True,
            f"<= one-message bot's p50 ({one_p50} ms) + 2 ms; default settings, once learned",
        )
    )
    two = _get(bots, "two", "two_messages") or {}
    out.append(
        Target(
            "bot mix: 2 messages in one answer",
            _get(two, "learned", "share_pct"),
            "% of turns",
            99.0 if two else None,
            False,
            f">= 99 % once learned (after the first {botmix.get('learn_turns')} turns);"
            " default settings",
        )
    )
    out.append(
        Target(
            "bot mix: 2nd messages spoken",
            two.get("second_spoken_pct"),
            "% of 2nd messages",
            100.0 if two else None,
            False,
            f"= 100 %: none lost, in its own answer or a later one, first turns included"
            f" ({two.get('second_messages_lost')} lost)",
        )
    )

    best = best_throughput(_get(pipeline, "throughput") or {})
    http_rps = None
    if best is not None:
        same = [
            r["window_turns_per_s"]
            for r in (_get(floors, "http", "throughput") or {}).values()
            if r["calls"] == best[1]
        ]
        http_rps = max(same) if same else None
    out.append(
        Target(
            "throughput: pipeline turns/s",
            best[0] if best else None,
            "turns/s",
            None if http_rps is None else http_rps / 4,
            False,
            f">= 1/4 x HTTP floor at {best[1] if best else '?'} callers ({http_rps} req/s)",
        )
    )

    held = holding.get("largest_clean") if holding else None
    out.append(
        Target(
            "holding: calls held, no missed deadline",
            held,
            "calls",
            None if best is None else 0.8 * best[0] * 8,
            False,
            ">= 0.8 x turns/s x 8" + (" (capped: box limit)" if holding.get("capped") else ""),
        )
    )
    out.append(
        Target(
            "holding: edge memory per held call",
            holding.get("edge_kb_per_call"),
            "KB",
            20.0,
            True,
            "<= 20 KB (VmRSS of the edge's processes)",
        )
    )

    cap = scaling.get("capacity") or {}
    top = max((int(k) for k in cap), default=0)
    out.append(
        Target(
            f"scaling: capacity at {top} workers",
            cap.get(str(top)),
            "turns/s",
            0.9 * top * cap["1"] if top > 1 and cap.get("1") else None,
            False,
            f">= 0.9 x {top} x capacity at 1 ({cap.get('1')} turns/s)",
        )
    )

    over = _get(deadline, "over_deadline_ms", "p99") if deadline.get("late_turns") else None
    out.append(
        Target(
            "deadline precision: late reprompt p99",
            over,
            "ms over",
            20.0,
            True,
            "<= deadline + 20 ms",
        )
    )

    out.extend(relay_targets(results))

    knee, twice = overload_step(overload, 1.0), overload_step(overload, 2.0)
    knee_goodput = knee["goodput_turns_per_s"] if knee else None
    out.append(
        Target(
            "overload: goodput at 2x the knee",
            twice["goodput_turns_per_s"] if twice else None,
            "turns/s",
            None if knee_goodput is None else 0.8 * knee_goodput,
            False,
            f">= 0.8 x goodput at the knee ({knee_goodput} turns/s; knee"
            f" {overload.get('knee_turns_per_s')} turns/s offered)",
        )
    )
    return out


def relay_targets(results: dict[str, Any]) -> list[Target]:
    """Relay mode beside gather mode, each edge at its defaults but VOICE_MODE."""
    rpipe = results.get("relay_pipeline") or {}
    rmix = results.get("relay_mix") or {}
    rhold = results.get("relay_holding") or {}
    holding = results.get("holding") or {}
    out = []
    floor_ms = relay_floor_sum_ms(results)
    out.append(
        Target(
            "relay: first token p50 at 1 caller",
            _get(rpipe, "first_token_ms", "p50"),
            "ms",
            None if floor_ms is None else 1.25 * floor_ms,
            True,
            f"<= 1.25 x relay floor sum ({floor_ms} ms: WebSocket frame in+out, 2 Redis,"
            " 2 bot, gRPC); instant bot, default settings",
        )
    )
    first = _get(rmix, "relay", "first_token_ms", "p50")
    gather = _get(rmix, "gather", "answer_ms", "p50")
    learn = rmix.get("learn_turns")
    out.append(
        Target(
            "relay mix: first token p50, 2 msgs 500 ms",
            first,
            "ms",
            500.0 if rmix else None,
            True,
            f"< 500 ms: before the bot's 2nd message exists; after the first {learn} turns",
        )
    )
    out.append(
        Target(
            "relay mix: first token p50 vs gather answer",
            first,
            "ms",
            gather,
            True,
            f"< gather's answer p50, same bot ({gather} ms), after the first {learn} turns",
        )
    )
    gather_held = holding.get("largest_clean") if holding else None
    out.append(
        Target(
            "relay holding: sessions held, none missed",
            rhold.get("largest_clean") if rhold else None,
            "sessions",
            gather_held or None,
            False,
            f">= gather calls held in this run ({gather_held})"
            + (" (capped: box limit)" if rhold.get("capped") else ""),
        )
    )
    out.append(
        Target(
            "relay holding: edge memory per session",
            rhold.get("edge_kb_per_call"),
            "KB",
            40.0,
            True,
            "<= 40 KB (VmRSS of the edge's processes)",
        )
    )
    interrupt = rmix.get("interrupt") or {}
    after = interrupt.get("tokens_after_interrupt") if interrupt.get("interrupts") else None
    out.append(
        Target(
            "relay: tokens sent after an interrupt",
            after,
            "tokens",
            0.0,
            True,
            f"= 0 after the ping fence ({interrupt.get('interrupts')} interrupts,"
            f" {interrupt.get('tokens_in_flight_at_interrupt')} in flight before it);"
            " n/a without an interrupt",
        )
    )
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _by_size(runs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Runs keyed "CALLERSxSHARDS", in numeric order."""
    return sorted(runs.items(), key=lambda kv: tuple(int(n) for n in kv[0].split("x")))


def figures_table(results: dict[str, Any]) -> str:
    rows = ["FIGURES (workers at default settings unless marked: window 0 = BOT_QUIET_MS=0)"]
    inherited = _get(results, "meta", "inherited_settings") or {}
    if inherited:
        given = ", ".join(f"{k}={v}" for k, v in inherited.items())
        rows.append(f"  NOTE: from this environment, in every stack (not defaults): {given}")
    floors = results.get("floors") or {}
    hops = floors.get("hops") or {}

    def line(label: str, value: Any, unit: str = "") -> None:
        text = value if isinstance(value, str) else _fmt(value, 3)
        rows.append(f"  {label:<58}{text:>14} {unit}")

    if floors:
        line(
            "floor HTTP in p50, 1 caller",
            _get(floors, "http", "latency", "1", "latency_ms", "p50"),
            "ms",
        )
        line("floor Redis write (XADD) p50", _get(hops, "redis", "write_ms", "p50"), "ms")
        line("floor Redis read (XREADGROUP) p50", _get(hops, "redis", "read_ms", "p50"), "ms")
        line("floor bot POST /messages p50", _get(hops, "bot", "post_message_ms", "p50"), "ms")
        line(
            "  (bot listen open p50, for reference)",
            _get(hops, "bot", "listen_open_ms", "p50"),
            "ms",
        )
        line("floor gRPC Deliver p50", _get(hops, "grpc", "deliver_ms", "p50"), "ms")
        line("floor sum (HTTP + 2 Redis + 2 bot + gRPC)", floor_sum_ms(floors), "ms")
        for key, run in _by_size(_get(floors, "http", "throughput") or {}):
            calls, shards = key.split("x")
            line(
                f"floor HTTP req/s, {calls} callers, {shards} generator(s)",
                run["window_turns_per_s"],
                "req/s",
            )
    pipeline = results.get("pipeline") or {}
    floor_ms = floor_sum_ms(floors)
    for run_set in (pipeline, pipeline.get("window_0") or {}):
        label = run_set.get("settings", "default")
        for callers, run in (run_set.get("latency") or {}).items():
            p = run["latency_ms"]
            over = "" if floor_ms is None else f" (+{p['p50'] - floor_ms:.2f} over floor)"
            line(
                f"pipeline p50 / p99, {callers} callers (think {run['think_time_s']} s), {label}",
                f"{p['p50']:.2f} / {p['p99']:.2f}",
                f"ms{over}",
            )
        for key, run in _by_size(run_set.get("throughput") or {}):
            calls, shards = key.split("x")
            line(
                f"pipeline turns/s, {calls} callers, {shards} generator(s), {label}",
                run["window_turns_per_s"],
                f"turns/s  {_cpu_text(run)}",
            )
    botmix = results.get("botmix") or {}
    n = botmix.get("learn_turns")
    for name, bot in (botmix.get("bots") or {}).items():
        p, f = bot["latency_ms"], bot["first_turns_latency_ms"]
        line(
            f"bot mix '{name}', 1 caller, {botmix.get('settings')}: p50 / p99",
            f"{p['p50']:.2f} / {p['p99']:.2f}",
            f"ms after the first {n} turns ({p['count']} turns);"
            f" first {n}: p50 {f['p50']:.1f}, max {f['max']:.1f} ms; window logged:"
            f" {', '.join(sorted({str(w) for w in bot.get('quiet_window_logged', {}).values()}))}",
        )
        two = bot.get("two_messages")
        if two:
            for part, what in (("first_turns", f"first {n} turns"), ("learned", "after")):
                b = two[part]
                share = "-" if b["share_pct"] is None else f"{b['share_pct']:.1f} %"
                line(
                    f"bot mix '{name}': both messages in one answer, {what}",
                    share,
                    f"({b['both']} of {b['turns']} turns)",
                )
            line(
                f"bot mix '{name}': 2nd messages lost / in a later answer",
                f"{two['second_messages_lost']} / {two['second_in_later_answer']}",
                f"(of {two['second_messages_expected']})",
            )
    holding = results.get("holding") or {}
    for step in holding.get("steps", []):
        line(
            f"holding {step['calls']} calls: missed / turns",
            f"{step['misses']} / {step['turns']}",
            f"(edge {step['edge_kb_per_call']} KB/call, p99 {step['latency_ms']['p99']:.0f} ms)"
            f"  {_cpu_text(step)}",
        )
    relay_figures(results, line)
    scaling = results.get("scaling") or {}
    for count, capacity in (scaling.get("capacity") or {}).items():
        line(
            f"capacity, slow bot, {count} worker(s)",
            capacity,
            f"turns/s (ideal {scaling.get('ideal_per_worker', 0) * int(count):.0f})",
        )
    deadline = results.get("deadline") or {}
    if deadline:
        o = deadline["over_deadline_ms"]
        line(
            f"late reprompt - deadline, p50 / p99 ({deadline['late_turns']} late turns)",
            f"{o['p50']:.2f} / {o['p99']:.2f}",
            "ms",
        )
    overload = results.get("overload") or {}
    if overload:
        rows.append(
            f"  overload: {overload['bot_ms']} ms bot, {overload['workers']} worker(s) x"
            f" WORKER_CONCURRENCY={overload['concurrency']} (knee"
            f" {overload['knee_turns_per_s']:.0f} turns/s = {overload['knee_calls']} calls, a turn"
            f" every {overload['think_time_s'] + overload['bot_ms'] / 1000:g} s), starts over"
            f" {overload['ramp_up_s']:g} s, deadline {overload['deadline_ms']}, otherwise default"
        )
    for step in overload.get("steps", []):
        hold = "-" if step["hold_share_pct"] is None else f"{step['hold_share_pct']:.1f} %"
        line(
            f"overload {step['factor']:g}x knee, {step['calls']} calls: offered / goodput",
            f"{step['offered_turns_per_s']:.1f} / {step['goodput_turns_per_s']:.1f}",
            f"turns/s (nominal {step['offered_nominal_turns_per_s']:.0f}); hold phrase {hold}",
        )
    return "\n".join(rows)


def relay_figures(results: dict[str, Any], line: Callable[[str, Any, str], None]) -> None:
    """The relay parts' lines, each added to the table by `line`."""
    rfloors = results.get("relay_floors") or {}
    ws = rfloors.get("ws") or {}
    if ws:
        line(
            f"floor WebSocket frame in+out p50 (echo, a frame per {ws['think_time_s']} s)",
            ws["round_trip_ms"]["p50"],
            f"ms (back to back {ws['back_to_back_ms']['p50']:.3f} ms)",
        )
        if "hops" in rfloors:
            line("  (Redis/bot/gRPC hops measured by relay_floors: floors did not run)", "", "")
        line("relay floor sum (WS + 2 Redis + 2 bot + gRPC)", relay_floor_sum_ms(results), "ms")
    rpipe = results.get("relay_pipeline") or {}
    if rpipe:
        f, e = rpipe["first_token_ms"], rpipe["cycle_end_ms"]
        floor_ms = relay_floor_sum_ms(results)
        over = "" if floor_ms is None else f" (+{f['p50'] - floor_ms:.2f} over floor)"
        gather = _get(results, "pipeline", "latency", "1", "latency_ms", "p50")
        beside = "" if gather is None else f"; gather answer p50 {gather:.2f} ms"
        line(
            f"relay first token p50 / p99, 1 caller (think {rpipe['think_time_s']} s), default",
            f"{f['p50']:.2f} / {f['p99']:.2f}",
            f"ms{over}; cycle end p50 {e['p50']:.2f} ms, {rpipe['turns']} turns{beside}",
        )
        hot = rpipe.get("no_think_reference") or {}
        if hot:
            line(
                "  (relay first token p50, 1 caller, no think time: processes never idle)",
                hot["first_token_ms"]["p50"],
                f"ms ({hot['turns']} turns)",
            )
    rmix = results.get("relay_mix") or {}
    if rmix:
        r, g, n = rmix["relay"], rmix["gather"], rmix["learn_turns"]
        line(
            "relay mix, 2 msgs 500 ms apart: relay first token p50 / p99",
            f"{r['first_token_ms']['p50']:.2f} / {r['first_token_ms']['p99']:.2f}",
            f"ms after the first {n} turns ({r['first_token_ms']['count']} turns; cycle end"
            f" p50 {r['cycle_end_ms']['p50']:.0f} ms; led by its own 1st message"
            f" {r['led_by_own_first_message']}, both in the cycle {r['both_messages_in_cycle']})",
        )
        line(
            "relay mix, 2 msgs 500 ms apart: gather answer p50 / p99",
            f"{g['answer_ms']['p50']:.2f} / {g['answer_ms']['p99']:.2f}",
            f"ms after the first {n} turns ({g['answer_ms']['count']} turns; first {n}: p50"
            f" {g['first_turns_answer_ms']['p50']:.0f} ms)",
        )
        i = rmix.get("interrupt") or {}
        if i:
            line(
                f"relay interrupts ({i['callers']} callers, barge after 1 token): tokens after",
                f"{i['tokens_after_interrupt']}",
                f"(of {i['interrupts']} interrupts; {i['tokens_in_flight_at_interrupt']} in"
                f" flight before the fence; {i['barge_ins_missed']} barge-ins too late;"
                f" protocol errors {i['protocol_errors']})",
            )
    for step in (results.get("relay_holding") or {}).get("steps", []):
        first = (step.get("relay") or {}).get("first_token_ms") or {}
        line(
            f"relay holding {step['calls']} sessions: missed / cycles",
            f"{step['misses']} / {(step.get('relay') or {}).get('cycles', 0)}",
            f"(edge {step['edge_kb_per_call']} KB/session, first token p99"
            f" {first.get('p99', 0):.0f} ms)  {_cpu_text(step)}",
        )


def _cpu_text(run: dict[str, Any]) -> str:
    """A run's CPU share per process (100 = one core) and its load generators'."""
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in run.get("cpu_pct", {}).items())
    gen = "/".join(f"{c:.0f}" for c in run["generator_cpu_pct"])
    return f"[cpu: {cpu}, callsim {gen}%]"


def targets_table(targets: list[Target]) -> str:
    head = f"{'TARGET':<44}{'figure':>14}{'target':>14}{'ratio':>8}  verdict"
    rows = [head]
    for t in targets:
        sign = "<=" if t.at_most else ">="
        rows.append(
            f"{t.name:<44}{_fmt(t.figure):>14}{sign + ' ' + _fmt(t.limit):>14}"
            f"{_fmt(t.ratio):>8}  {t.verdict}"
        )
        rows.append(f"    {t.unit}; {t.how}")
    return "\n".join(rows)
