"""The targets of docs/architecture.md, "How fast, and how we know": each a ratio between figures
of the same run, and the printed table."""

from __future__ import annotations

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


def best_throughput(runs: dict[str, Any]) -> tuple[float, int] | None:
    """The most answered turns/s of any run, and at how many callers."""
    if not runs:
        return None
    best = max(runs.values(), key=lambda r: r["window_turns_per_s"])
    return best["window_turns_per_s"], best["calls"]


def evaluate(results: dict[str, Any]) -> list[Target]:
    floors = results.get("floors") or {}
    pipeline = results.get("pipeline") or {}
    holding = results.get("holding") or {}
    scaling = results.get("scaling") or {}
    deadline = results.get("deadline") or {}
    out = []

    floor_ms = floor_sum_ms(floors)
    p50_one = _get(pipeline, "latency", "1", "latency_ms", "p50")
    out.append(
        Target(
            "latency efficiency: p50 at 1 caller",
            p50_one,
            "ms",
            None if floor_ms is None else 1.25 * floor_ms,
            True,
            f"<= 1.25 x floor sum ({floor_ms} ms)",
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
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _by_size(runs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Runs keyed "CALLERSxSHARDS", in numeric order."""
    return sorted(runs.items(), key=lambda kv: tuple(int(n) for n in kv[0].split("x")))


def figures_table(results: dict[str, Any]) -> str:
    rows = ["FIGURES"]
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
    for callers, run in (pipeline.get("latency") or {}).items():
        p = run["latency_ms"]
        over = "" if floor_ms is None else f" (+{p['p50'] - floor_ms:.2f} over floor)"
        line(
            f"pipeline p50 / p99, {callers} callers (think {run['think_time_s']} s)",
            f"{p['p50']:.2f} / {p['p99']:.2f}",
            f"ms{over}",
        )
    for key, run in _by_size(pipeline.get("throughput") or {}):
        calls, shards = key.split("x")
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in run.get("cpu_pct", {}).items())
        gen = "/".join(f"{c:.0f}" for c in run["generator_cpu_pct"])
        line(
            f"pipeline turns/s, {calls} callers, {shards} generator(s)",
            run["window_turns_per_s"],
            f"turns/s  [cpu: {cpu}, callsim {gen}%]",
        )
    holding = results.get("holding") or {}
    for step in holding.get("steps", []):
        line(
            f"holding {step['calls']} calls: missed / turns",
            f"{step['misses']} / {step['turns']}",
            f"(edge {step['edge_kb_per_call']} KB/call, p99 {step['latency_ms']['p99']:.0f} ms)",
        )
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
    return "\n".join(rows)


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
