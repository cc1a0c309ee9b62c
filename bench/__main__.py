"""`python -m bench [--smoke] [--out DIR] [--only PARTS]`: see bench/__init__.py."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import floors, loadgen, relay, scenarios
from bench.sizes import FULL, SMOKE, Sizes
from bench.targets import evaluate, figures_table, targets_table
from devstack.processes import Launcher
from devstack.stack import forwarded_variables

# Each relay_* part runs relay mode (VOICE_MODE=relay) beside the gather part before it.
PARTS = (
    "floors",
    "relay_floors",
    "pipeline",
    "relay_pipeline",
    "botmix",
    "relay_mix",
    "holding",
    "relay_holding",
    "scaling",
    "deadline",
    "overload",
)
EDGE_WORKERS = 1  # one gunicorn worker process: the same for the floor and the pipeline
PIPELINE_WORKERS = 2
HOLD_UNIT_TURNS_PER_S = 300.0


def measure_floors(sizes: Sizes) -> dict[str, Any]:
    launcher = Launcher()
    out: dict[str, Any] = {
        "hops": floors.measure_hops(launcher, sizes.hop_round_trips),
        "http": {"latency": {}, "throughput": {}},
    }
    with floors.HttpFloor(launcher, EDGE_WORKERS) as http:
        one = http.load(1, sizes.one_caller_think_s, sizes.latency_duration_s / 2)
        out["http"]["latency"]["1"] = {**one.summary(), "think_time_s": sizes.one_caller_think_s}
        for callers in sizes.throughput_callers:
            for shards in sizes.throughput_shards:
                run = http.load(
                    callers,
                    0.0,
                    sizes.throughput_duration_s,
                    shards=shards,
                    warmup_s=sizes.throughput_warmup_s,
                )
                out["http"]["throughput"][f"{callers}x{shards}"] = run.summary()
    return out


def measure_relay_floors(sizes: Sizes, with_hops: bool) -> dict[str, Any]:
    """The WebSocket frame floor; the Redis, bot and gRPC hops too when the floors part does not
    run (relay's floor sum shares them with gather's)."""
    launcher = Launcher()
    out: dict[str, Any] = {}
    with floors.WsFloor(launcher, EDGE_WORKERS) as ws:
        out["ws"] = ws.round_trips(
            sizes.hop_round_trips, sizes.latency_duration_s / 2, sizes.one_caller_think_s
        )
    if with_hops:
        out["hops"] = floors.measure_hops(launcher, sizes.hop_round_trips)
    return out


def inherited_settings() -> dict[str, str]:
    """Edge and worker settings this process's environment passes on to every stack: a figure
    labelled "default" is only the default when this is empty."""
    names = forwarded_variables("edge") | forwarded_variables("worker")
    return {k: os.environ[k] for k in sorted(names) if k in os.environ}


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the suite runs")
    parser.add_argument("--out", default="bench-results", help="directory for the JSON results")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    sizes = SMOKE if args.smoke else FULL
    loadgen.START_DELAY_S = sizes.load_start_delay_s
    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "smoke": args.smoke,
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "commit": _git_commit(),
            "edge_workers": EDGE_WORKERS,
            "pipeline_workers": PIPELINE_WORKERS,
            "inherited_settings": inherited_settings(),
            "sizes": sizes.__dict__,
        },
    }

    def step(name: str, fn: Any) -> None:
        if name not in parts:
            return
        t0 = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results[name] = fn()
        print(f"bench: {name} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    step("floors", lambda: measure_floors(sizes))
    step("relay_floors", lambda: measure_relay_floors(sizes, "floors" not in parts))
    step("pipeline", lambda: scenarios.instant_pipeline(sizes, EDGE_WORKERS, PIPELINE_WORKERS))
    step("relay_pipeline", lambda: relay.pipeline(sizes, EDGE_WORKERS, PIPELINE_WORKERS))
    step("botmix", lambda: scenarios.bot_mix(sizes, EDGE_WORKERS, PIPELINE_WORKERS))
    step("relay_mix", lambda: relay.mix(sizes, EDGE_WORKERS, PIPELINE_WORKERS))
    # Holding's step ladder is in units of the pipeline's best turns/s; a run that does not
    # measure it (--only holding,...) uses HOLD_UNIT_TURNS_PER_S, high enough that both modes
    # find their limit on a 2-core box rather than stopping at the ladder's top.
    best = max(
        (
            r["window_turns_per_s"]
            for r in (results.get("pipeline") or {}).get("throughput", {}).values()
        ),
        default=0.0,
    )
    step(
        "holding",
        lambda: scenarios.holding(
            sizes, best or HOLD_UNIT_TURNS_PER_S, EDGE_WORKERS, PIPELINE_WORKERS
        ),
    )
    step(
        "relay_holding",
        lambda: relay.relay_holding(
            sizes, best or HOLD_UNIT_TURNS_PER_S, EDGE_WORKERS, PIPELINE_WORKERS
        ),
    )
    step("scaling", lambda: scenarios.scaling(sizes, EDGE_WORKERS))
    step("deadline", lambda: scenarios.deadline_precision(sizes, EDGE_WORKERS))
    step("overload", lambda: scenarios.overload(sizes, EDGE_WORKERS))
    targets = evaluate(results)
    results["targets"] = [t.to_json() for t in targets]
    results["meta"]["elapsed_s"] = round(time.time() - started, 1)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    text = json.dumps(results, indent=2, default=str) + "\n"
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text, encoding="utf-8")
    (out_dir / "latest.json").write_text(text, encoding="utf-8")
    print(figures_table(results))
    print()
    print(targets_table(targets))
    print(
        f"\nresults: {path} (and {out_dir / 'latest.json'}), {results['meta']['elapsed_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
