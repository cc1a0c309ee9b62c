"""`python -m faultsuite [--smoke] [--calls N] [--duration-s S]`: calls survive faults.

Exit status 1 when any turn was lost, any turn reached the bot twice, a retried webhook's answer
was heard twice, or any call got anything but valid TwiML (or the suite itself could not run a
phase). The "empty-redis" phase (full run only) restarts Redis with nothing kept: the turns and
late replies Redis held then are gone by definition, so that phase reports its lost turns
without failing; it measures how soon calls go on (a turn answered N s after the restart).

In the "process" phase every third call also has its Gather webhooks retried as Twilio retries
a slow webhook (the same request again after 0.2 s, half with the first connection cut); the
"retried" column shows how many of them were answered with the turn's own reply.

The "relay" phase runs the calls in relay mode (ConversationRelay) with two gunicorn processes,
and kills one of them with kill -9 as well as workers: every call must also complete its script
(every line said and answered), reconnecting through the <Connect action> where its socket died.

The "outbound" phase (faultsuite/outbound.py) places calls through POST /v1/calls, each with its
own Idempotency-Key and sent again with it when the kill cut its request, at callsim's Twilio
stand-in, while an edge process and a worker are killed -9: every call must get a final status,
none may be placed twice, every person must hear the bot and complete its script, every
machine must get the voicemail message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from faultsuite import outbound
from faultsuite.outbound import OutboundResult, OutboundSpec, run_outbound
from faultsuite.run import PhaseResult, PhaseSpec, run_phase

COLUMNS = (
    ("phase", 11), ("calls", 5), ("turns", 5), ("answered", 8), ("late", 5), ("fallback", 8),
    ("stalled", 7), ("lost", 4), ("dup@bot", 7), ("non-TwiML", 9), ("done", 5),
    ("reconn", 6), ("retried", 11), ("faults", 6),
)  # fmt: skip
RELAY_EDGE_WORKERS = 2


def relay_phase(
    calls: int, turns: int, duration_s: float, schedule: list[tuple[float, str]], seed: int
) -> PhaseSpec:
    """Relay mode on two gunicorn processes; every call must complete its script."""
    return PhaseSpec(
        "relay",
        calls,
        turns,
        duration_s,
        schedule,
        seed=seed,
        voice_mode="relay",
        edge_workers=RELAY_EDGE_WORKERS,
        require_complete=True,
    )


def phases(args: argparse.Namespace) -> list[PhaseSpec | OutboundSpec]:
    if args.smoke:
        calls, duration = args.calls or 10, args.duration_s or 60.0
        process = [(0.25, "kill_worker"), (0.55, "restart_redis")]
        relay = [(0.2, "kill_edge"), (0.4, "kill_worker"), (0.6, "restart_redis")]
        return [
            PhaseSpec(
                "process", calls, args.turns, duration, process, seed=args.seed, retry_every=3
            ),
            # Smaller still, so the CI run stays within about 2 minutes.
            relay_phase(args.calls or 8, min(args.turns, 4), duration * 0.4, relay, args.seed + 3),
            # Three bursts of 4 calls, 4 s apart: the edge kill waits for one in flight.
            OutboundSpec(
                "outbound",
                args.calls or 12,
                duration * 0.25,
                [(0.2, "kill_edge_api"), (0.6, "kill_worker")],
                seed=args.seed + 4,
            ),
        ]
    calls, duration = args.calls or 40, args.duration_s or 120.0
    process = [
        (0.10, "kill_worker"), (0.22, "restart_redis"), (0.34, "kill_worker"),
        (0.46, "restart_edge"), (0.58, "kill_worker"), (0.70, "redis_outage"),
        (0.80, "kill_worker"),
    ]  # fmt: skip
    relay = [
        (0.10, "kill_edge"), (0.22, "kill_worker"), (0.34, "restart_redis"),
        (0.46, "kill_edge"), (0.58, "kill_worker"), (0.70, "kill_edge"),
    ]  # fmt: skip
    bot = ("--error-rate", "0.05", "--stall-rate", "0.02")
    return [
        PhaseSpec("process", calls, args.turns, duration, process, seed=args.seed, retry_every=3),
        PhaseSpec("bot", calls, args.turns, duration / 2, [], bot, seed=args.seed + 1),
        PhaseSpec(
            "empty-redis",
            calls,
            args.turns,
            duration / 2,
            [(0.4, "restart_redis_empty")],
            seed=args.seed + 2,
            data_loss_expected=True,
        ),
        relay_phase(calls, args.turns, duration, relay, args.seed + 3),
        OutboundSpec(
            "outbound",
            calls,
            duration / 2,
            [
                (0.15, "kill_edge_api"),
                (0.3, "kill_worker"),
                (0.5, "kill_edge"),
                (0.7, "kill_worker"),
            ],
            seed=args.seed + 4,
        ),
    ]


def table(results: list[PhaseResult]) -> str:
    head = " ".join(name.rjust(width) for name, width in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in results:
        t = r.tally
        mid = sum(f.mid_turn for f in r.faults)
        cells = (
            r.name, t.calls, t.turns, t.answered, t.answered_late, t.fallback, t.stalled,
            t.lost, t.duplicated, t.non_twiml, f"{t.completed}/{t.calls}", t.reconnects,
            f"{t.retried_real}/{t.retried}", f"{mid}/{len(r.faults)}",
        )  # fmt: skip
        lines.append(" ".join(str(c).rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)


def reconnects(results: list[PhaseResult]) -> list[str]:
    """One line per edge process killed in relay mode: the calls it cut, and their recovery."""
    lines = []
    for r in results:
        for fault in r.faults:
            if fault.calls_hit is None:
                continue
            line = (
                f"{r.name}: {fault.kind} at {fault.at_s:.1f}s: {fault.calls_hit} calls reconnected"
            )
            if fault.answered_s is not None:
                line += f", the last answered again {fault.answered_s:.1f}s after the kill"
            lines.append(line)
        if r.tally.said_again:
            lines.append(
                f"{r.name}: {r.tally.said_again} lines said again at the reprompt (sent as their"
                " socket's process was killed, they never reached the edge)"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faultsuite", description=__doc__)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CI size: 10 calls, ~60 s, 2 faults; then 8 relay calls of 4 lines, ~24 s, 3 faults;"
        " then 12 outbound calls, ~15 s, 2 faults",
    )
    p.add_argument("--calls", type=int, default=0, help="calls per phase (default 40; smoke 10)")
    p.add_argument("--turns", type=int, default=6, help="lines each caller says")
    p.add_argument("--duration-s", type=float, default=0.0, help="process phase length")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--phase", action="append", default=[], help="run only this phase (repeatable)")
    p.add_argument("--report", default="fault-results/faults.json", help="JSON report path")
    args = p.parse_args(argv)
    if args.calls < 0 or args.turns < 1 or args.duration_s < 0:
        p.error("--calls, --turns and --duration-s must be positive")
    started = time.time()
    results: list[PhaseResult] = []
    placed: list[OutboundResult] = []
    done: list[PhaseResult | OutboundResult] = []
    specs = [s for s in phases(args) if not args.phase or s.name in args.phase]
    if not specs:
        p.error(f"no phase named {args.phase}")
    for spec in specs:
        if isinstance(spec, OutboundSpec):
            print(
                f"== phase {spec.name}: {spec.calls} calls through POST /v1/calls, "
                f"{spec.duration_s:.0f} s, faults {[k for _, k in spec.schedule]}",
                flush=True,
            )
            placed.append(run_outbound(spec))
            done.append(placed[-1])
            continue
        faults = [k for _, k in spec.schedule] or list(spec.botsim_args)
        print(
            f"== phase {spec.name}: {spec.calls} calls x {spec.turns} lines, "
            f"{spec.duration_s:.0f} s, faults {faults}",
            flush=True,
        )
        results.append(run_phase(spec))
        done.append(results[-1])
    ok = all(r.ok for r in done)
    report = {
        "ok": ok,
        "smoke": args.smoke,
        "started_unix": round(started),
        "args": vars(args),
        "phases": [r.as_dict() for r in done],
        "totals": {
            key: sum(getattr(r.tally, key) for r in results)
            for key in (
                "calls",
                "turns",
                "answered",
                "answered_late",
                "fallback",
                "stalled",
                "lost",
                "duplicated",
                "non_twiml",
                "completed",
                "reconnects",
                "said_again",
            )
        },  # fmt: skip
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    with open(args.report, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    if results:
        print(table(results))
    if placed:
        print(outbound.table(placed))
    for line in reconnects(results):
        print(line)
    for r in results:
        for error in r.errors:
            print(f"{r.name}: {error}", file=sys.stderr)
        for problem in r.tally.problems[:20]:
            print(f"{r.name}: {problem}", file=sys.stderr)
        if r.incomplete:
            print(f"{r.name}: {r.incomplete} calls did not complete their script", file=sys.stderr)
            for note in [n for n in r.tally.notes if "script" in n.get("note", "")][:20]:
                print(f"{r.name}: {note}", file=sys.stderr)
    for o in placed:
        for error in o.errors:
            print(f"{o.name}: {error}", file=sys.stderr)
        for problem in o.problems[:20]:
            print(f"{o.name}: {problem}", file=sys.stderr)
    print(f"report: {args.report}  ->  {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
