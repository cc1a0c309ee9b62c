"""`python -m callsim load`: flags to LoadConfig, then the table, JSON report and plot."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any, TextIO

from callsim.load import LoadConfig, run_load
from callsim.script import load_script
from callsim.stats import DEFAULT_HOLD_PHRASE, DEFAULT_REPROMPT_PHRASE, DEFAULT_TROUBLE_PHRASE


def add_load_parser(sub: Any, add_target_args: Callable[[argparse.ArgumentParser], None]) -> None:
    load = sub.add_parser(
        "load",
        help="many concurrent calls; latency percentiles and outcomes (relay sessions: time to "
        "first token and to the end of each talk cycle)",
    )
    add_target_args(load)
    load.add_argument("--calls", type=int, default=10, help="concurrent calls in total")
    load.add_argument(
        "--ramp-up-s",
        type=float,
        default=0.0,
        help="spread call starts evenly over this many seconds",
    )
    load.add_argument(
        "--turns",
        type=int,
        default=None,
        help="utterances per call, cycling the script (default: the script once)",
    )
    load.add_argument(
        "--think-time-s",
        type=float,
        default=1.0,
        help="seconds between hearing the bot and speaking",
    )
    load.add_argument(
        "--script",
        help="utterances: JSON list (null = silence) or one per line "
        "(empty = silence; dtmf:12# keys; relay mode: barge:N:words); default a single 'hello'",
    )
    load.add_argument(
        "--say",
        action="append",
        default=None,
        metavar="TEXT",
        help="an utterance, instead of --script (repeatable)",
    )
    load.add_argument(
        "--duration-s",
        type=float,
        default=None,
        help="callers hang up at their next turn after this many seconds",
    )
    load.add_argument(
        "--reprompt-phrase",
        default=DEFAULT_REPROMPT_PHRASE,
        help="what the bridge says after silence (and, late, after speech)",
    )
    load.add_argument(
        "--hold-phrase",
        default=DEFAULT_HOLD_PHRASE,
        help="what the bridge says when the bot misses the deadline",
    )
    load.add_argument(
        "--trouble-phrase",
        default=DEFAULT_TROUBLE_PHRASE,
        help="(start of) what the bridge says when Redis or the bot is down",
    )
    load.add_argument("--webhook-timeout-s", type=float, default=15.0)
    load.add_argument("--report", help="write the JSON report here")
    load.add_argument("--plot", help="write a PNG plot here")
    load.add_argument("--quiet", action="store_true", help="no live progress line on stderr")


def config_from_args(args: argparse.Namespace, progress: TextIO | None) -> LoadConfig:
    if args.script and args.say:
        raise SystemExit("give --script or --say, not both")
    script = load_script(args.script) if args.script else (args.say or ["hello"])
    try:
        return LoadConfig(
            url=args.url,
            account_sid=args.account_sid,
            auth_token=args.auth_token,
            calls=args.calls,
            ramp_up_s=args.ramp_up_s,
            turns=args.turns,
            think_time_s=args.think_time_s,
            script=tuple(script),
            duration_s=args.duration_s,
            public_url=args.public_url,
            status_url=args.status_url,
            reprompt_phrase=args.reprompt_phrase,
            hold_phrase=args.hold_phrase,
            trouble_phrase=args.trouble_phrase,
            webhook_timeout_s=args.webhook_timeout_s,
            progress=progress,
        )
    except ValueError as exc:
        raise SystemExit(f"callsim load: {exc}") from None


def run_load_command(args: argparse.Namespace, out: TextIO) -> int:
    from callsim import report as show  # matplotlib is only imported when plotting

    config = config_from_args(args, None if args.quiet else sys.stderr)
    result = asyncio.run(run_load(config))
    print(show.table(result), file=out)
    if args.report:
        show.write_json(result, args.report)
        print(f"report: {args.report}", file=out)
    if args.plot:
        show.plot(result, args.plot)
        print(f"plot: {args.plot}", file=out)
    # Non-zero when something broke: a CI job running load can fail on it.
    return 1 if result.broken() else 0
