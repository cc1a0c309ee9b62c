"""`python -m callsim twilio-api` (Twilio's REST stand-in) and `... campaign` (calls through our
API): flags to settings, then serve or run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from typing import Any, TextIO

from callsim.callee import DEFAULT_PERSON_SAYS, CalleeSettings, CalleeTable


def add_outbound_parsers(sub: Any) -> None:
    env = os.environ
    api = sub.add_parser(
        "twilio-api",
        help="serve Twilio's REST API for placing calls, then play each callee "
        "(person, machine, fax, busy, no-answer, failed by the number's last digit)",
    )
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8081, help="0: any free port")
    api.add_argument(
        "--account-sid",
        default=env.get("TWILIO_ACCOUNT_SID"),
        help="the account's AccountSid (default: $TWILIO_ACCOUNT_SID)",
    )
    api.add_argument(
        "--auth-token",
        default=env.get("TWILIO_AUTH_TOKEN"),
        help="its auth token: Basic auth, and the signature of every webhook "
        "(default: $TWILIO_AUTH_TOKEN)",
    )
    api.add_argument(
        "--say",
        action="append",
        default=None,
        metavar="TEXT",
        help=f"what a person who answers says at each turn, then hangs up (repeatable; "
        f"default {' / '.join(DEFAULT_PERSON_SAYS)})",
    )
    api.add_argument(
        "--callee",
        action="append",
        default=[],
        metavar="DIGITS=KIND",
        help="numbers ending in DIGITS reach KIND (person, machine, fax, busy, no-answer, "
        "failed); the longest suffix wins over the default table on the last digit: "
        "0-4 person, 5 machine, 6 fax, 7 busy, 8 no-answer, 9 failed",
    )
    api.add_argument(
        "--owned-number",
        action="append",
        default=[],
        metavar="E164",
        help="the account's numbers; any other From is refused (21210). Default: any",
    )
    api.add_argument("--ring-s", type=float, default=0.2, help="rings before an answer")
    api.add_argument(
        "--api-latency-s",
        type=float,
        default=0.0,
        help="how long a create request takes to reach Twilio (a client gone by then placed "
        "nothing)",
    )
    api.add_argument(
        "--no-answer-s", type=float, default=2.0, help="rings before no-answer (<= Timeout)"
    )
    api.add_argument(
        "--think-time-s", type=float, default=0.0, help="a person's pause before speaking"
    )

    campaign = sub.add_parser(
        "campaign",
        help="place N calls at a rate through voicebridge's POST /v1/calls; outcomes and the "
        "time to the bot's first words (read from a running `callsim twilio-api`)",
    )
    campaign.add_argument(
        "--api", default="http://127.0.0.1:8080/v1/calls", help="voicebridge's calls API"
    )
    campaign.add_argument(
        "--token", default=env.get("API_TOKEN"), help="its bearer token (default: $API_TOKEN)"
    )
    campaign.add_argument(
        "--twilio-api",
        default="http://127.0.0.1:8081",
        help="the `callsim twilio-api` the edge places calls with",
    )
    campaign.add_argument("-n", "--calls", type=int, default=10)
    campaign.add_argument("--rate", type=float, default=5.0, help="calls requested per second")
    campaign.add_argument(
        "--to-pattern",
        default="+1415555{i:04d}",
        help="the number for call i (str.format; default +1415555{i:04d}: the last digit "
        "cycles through the stand-in's callees)",
    )
    campaign.add_argument("--from", dest="from_number", help="default: the API's OUTBOUND_FROM")
    campaign.add_argument("--context", default="{}", help="a JSON object sent with every call")
    campaign.add_argument(
        "--finish-timeout-s", type=float, default=120.0, help="wait for calls to end"
    )
    campaign.add_argument("--report", help="write the JSON report here")
    campaign.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def run_twilio_api(parser: argparse.ArgumentParser, args: argparse.Namespace, out: TextIO) -> int:
    from callsim.twilio_api import StandInSettings, serve

    try:
        table = CalleeTable.parse(args.callee)
    except ValueError as exc:
        parser.error(f"--callee {exc}")
    settings = StandInSettings(
        account_sid=args.account_sid,
        auth_token=args.auth_token,
        callee=CalleeSettings(
            table=table,
            person_says=tuple(args.say) if args.say else DEFAULT_PERSON_SAYS,
            ring_s=args.ring_s,
            no_answer_s=args.no_answer_s,
            think_time_s=args.think_time_s,
        ),
        owned_numbers=frozenset(args.owned_number),
        api_latency_s=args.api_latency_s,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, args.host, args.port, out))
    return 0


def run_campaign_command(
    parser: argparse.ArgumentParser, args: argparse.Namespace, out: TextIO
) -> int:
    from callsim.campaign import CampaignConfig, run_campaign, write_json

    if not args.token:
        parser.error("--token (or API_TOKEN) is required")
    try:
        context = json.loads(args.context)
        if not isinstance(context, dict):
            raise ValueError("not a JSON object")
        config = CampaignConfig(
            api_url=args.api,
            token=args.token,
            stand_in_url=args.twilio_api,
            calls=args.calls,
            rate_per_s=args.rate,
            to_pattern=args.to_pattern,
            from_number=args.from_number,
            context=context,
            finish_timeout_s=args.finish_timeout_s,
        )
    except ValueError as exc:
        parser.error(f"campaign: {exc}")
    report = asyncio.run(run_campaign(config, None if args.quiet else sys.stderr))
    print(report.table(), file=out)
    if args.report:
        write_json(report, args.report)
        print(f"report: {args.report}", file=out)
    return 0 if report.accepted and not report.outcomes.get("unfinished") else 1
