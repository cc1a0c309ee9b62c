"""Command line: `python -m callsim call ...` (one call, scripted or typed), `... load ...`,
`... twilio-api ...` and `... campaign ...` (outbound calls, callsim.outbound_cli)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TextIO

import aiohttp

from callsim.call import CallResult, Event, WebhookRetry, place_call
from callsim.script import HANG_UP, Reply, Script, parse_action


def _add_target_args(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    parser.add_argument("--url", required=True, help="the voice webhook to call, as reachable")
    parser.add_argument(
        "--account-sid",
        default=env.get("TWILIO_ACCOUNT_SID"),
        help="AccountSid to send (default: $TWILIO_ACCOUNT_SID)",
    )
    parser.add_argument(
        "--auth-token",
        default=env.get("TWILIO_AUTH_TOKEN"),
        help="token to sign with (default: $TWILIO_AUTH_TOKEN)",
    )
    parser.add_argument(
        "--public-url",
        default=env.get("PUBLIC_URL"),
        help="origin Twilio would use; requests are signed for it "
        "(default: $PUBLIC_URL, else --url itself)",
    )
    parser.add_argument("--status-url", help="status callback URL (relative to --url allowed)")
    parser.add_argument("--from", dest="from_number", default="+14155550100")
    parser.add_argument("--to", dest="to_number", default="+14155550199")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m callsim", description="A stand-in for Twilio Voice and its callers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    call = sub.add_parser("call", help="place one call and print what the caller hears")
    _add_target_args(call)
    call.add_argument(
        "--say",
        action="append",
        default=[],
        metavar="TEXT",
        help='what the caller says at each turn, in order ("" = silence; dtmf:123 presses '
        "keys; relay mode: barge:N:words talks over the reply after N tokens)",
    )
    call.add_argument(
        "--interactive",
        action="store_true",
        help="type each utterance (empty line = silence, dtmf:123 = keys, Ctrl-D = hang up); "
        "relay sessions (<Connect><ConversationRelay>) are followed, tokens shown as they stream",
    )
    call.add_argument(
        "--realtime",
        action="store_true",
        help="wait out <Pause> and silent Gather timeouts like a real call",
    )
    call.add_argument("--max-webhooks", type=int, default=50)
    call.add_argument(
        "--dial",
        action="append",
        default=[],
        metavar="TARGET=OUTCOME",
        help="what the person a <Dial> reaches does: completed (the default), busy, no-answer, "
        "failed or canceled; TARGET is the number or SIP URI dialled (repeatable)",
    )

    call.add_argument(
        "--retry-webhooks",
        type=float,
        metavar="SECONDS",
        help="as Twilio does: a Gather action not answered within SECONDS is sent again (same "
        "body, signature and I-Twilio-Idempotency-Token), the first connection cut",
    )
    call.add_argument(
        "--retry-keep-first",
        action="store_true",
        help="with --retry-webhooks: leave the first attempt's connection waiting",
    )

    from callsim.load_cli import add_load_parser  # late: keeps `call` light to start

    add_load_parser(sub, _add_target_args)
    from callsim.outbound_cli import add_outbound_parsers

    add_outbound_parsers(sub)
    return parser


def _require_credentials(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.account_sid:
        parser.error("--account-sid (or TWILIO_ACCOUNT_SID) is required")
    if not args.auth_token:
        parser.error("--auth-token (or TWILIO_AUTH_TOKEN) is required")


def format_event(event: Event) -> str | None:
    """A transcript line as the caller experiences it."""
    kind = event[0]
    if kind == "bot_say":
        return f"Bot: {event[1]}"
    if kind == "caller_say":
        return f"You: {event[1]}"
    if kind == "silence":
        return "You: (silence)"
    if kind == "play":
        return f"Bot: (plays {event[1]})"
    if kind == "pause":
        return f"Bot: (pause {event[1]} s)"
    if kind == "redirect":
        return f"(redirect to {event[1]})"
    if kind == "retry":
        return f"(no answer in time: retrying {event[1]})"
    if kind == "dial":
        return f"(dials {event[1]}: {event[2]})"
    if kind == "fallback":
        return f"(webhook failed, error {event[2]}: Twilio asks the FallbackUrl)"
    if kind == "hangup":
        return "(the bot hangs up)"
    if kind == "error":
        return f"(error: {event[1]})"
    # Relay mode (bot_token / bot_reply are streamed by _Printer, not here).
    if kind == "caller_dtmf":
        return f"You: (press {event[1]})"
    if kind == "barge_in":
        return f"You: (cut in) {event[1]}"
    if kind == "barge_in_refused":
        return f"(cannot interrupt: you wait, then say {event[1]!r})"
    if kind == "relay_connect":
        return f"(relay session: {event[1]})"
    if kind == "relay_app_end":
        return f"(the bot ends the session{': ' + event[1] if event[1] else ''})"
    if kind == "relay_end":
        return f"(relay session {event[1]})"
    if kind == "send_digits":
        return f"Bot: (sends digits {event[1]})"
    if kind == "language":
        return f"(language now {event[1]})"
    if kind == "protocol_error":
        return f"(PROTOCOL ERROR: {event[1]})"
    if kind == "token_after_interrupt":
        return f"(TOKEN AFTER INTERRUPT: {event[1]!r})"
    return None


def voices_heard(result: CallResult) -> list[str]:
    """The voices the call was spoken with, in order: each <Say>'s, each <ConversationRelay>'s
    (provider, voice, language; unset ones are Twilio's defaults)."""
    seen: list[str] = []
    for record in result.webhooks:
        try:
            root = ET.fromstring(record.body)
        except ET.ParseError:
            continue  # a status callback's empty answer
        for el in root.iter():
            if el.tag not in ("Say", "ConversationRelay"):
                continue
            name = f"{el.get('voice') or 'default voice'} ({el.get('language') or 'en-US'})"
            if el.tag == "ConversationRelay":
                name = f"relay {el.get('ttsProvider') or ''} {name}".replace("  ", " ")
            if name not in seen:
                seen.append(name)
    return seen


class _Printer:
    """Prints the transcript; relay tokens are written as they stream, on one line per reply."""

    def __init__(self, out: TextIO, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive
        self.streaming = False

    def __call__(self, event: Event) -> None:
        kind = event[0]
        if kind == "bot_token":
            if not self.streaming:
                self.out.write("Bot: ")
                self.streaming = True
            self.out.write(event[1])
            self.out.flush()
            return
        if kind == "bot_reply" or self.streaming:
            if self.streaming:
                self.out.write("\n")
                self.streaming = False
            if kind == "bot_reply":
                self.out.flush()
                return
        # In interactive mode the person already sees what they typed.
        if self.interactive and kind in ("caller_say", "silence", "caller_dtmf"):
            return
        line = format_event(event)
        if line is not None:
            print(line, file=self.out, flush=True)


async def _typed_reply(heard: Sequence[str]) -> Reply:
    try:
        line = await asyncio.to_thread(input, "You: ")
    except EOFError:
        print(file=sys.stdout)
        return HANG_UP
    if not sys.stdin.isatty():
        print(line, flush=True)  # piped input: show it, as a terminal would have echoed it
    try:
        parse_action(line.strip())  # dtmf:12 / barge:N:words: say so now if mistyped
    except ValueError as exc:
        print(f"({exc}; try again)", flush=True)
        return await _typed_reply(heard)
    return line.strip() or None


async def _call(args: argparse.Namespace, out: TextIO) -> int:
    interactive: bool = args.interactive
    show = _Printer(out, interactive)
    script = Script(_typed_reply) if interactive else Script(list(args.say))
    # trust_env: one call from a person's shell honours their HTTP(S)_PROXY/NO_PROXY settings.
    async with aiohttp.ClientSession(trust_env=True) as client:
        result = await place_call(
            client,
            args.url,
            account_sid=args.account_sid,
            auth_token=args.auth_token,
            caller=script,
            from_number=args.from_number,
            to_number=args.to_number,
            status_url=args.status_url,
            signing_base=args.public_url,
            max_webhooks=args.max_webhooks,
            realtime=args.realtime,
            on_event=show,
            dial_outcomes=dict(d.partition("=")[::2] for d in args.dial),
            retry=(
                WebhookRetry(args.retry_webhooks, cut_first=not args.retry_keep_first)
                if args.retry_webhooks is not None
                else None
            ),
        )
    if result.outcome == "caller_hung_up":
        print("(you hang up)", file=out)
    print(
        f"[{result.call_sid}: {result.outcome}, {len(result.webhooks)} webhooks, "
        f"{result.duration_s:.1f} s]",
        file=out,
    )
    voices = voices_heard(result)
    if voices:  # which voice the number's route speaks with (ROUTES_FILE)
        print(f"[voices: {', '.join(voices)}]", file=out)
    relay = result.relay
    if relay is not None:
        print(
            f"[relay: {len(relay.sessions)} sessions, {len(relay.cycles)} replies, "
            f"{len(relay.protocol_errors)} protocol errors, "
            f"{relay.tokens_after_interrupt} tokens after interrupt]",
            file=out,
        )
        if relay.protocol_errors or relay.tokens_after_interrupt:
            return 1
    return 0 if result.outcome in ("hangup_by_app", "caller_hung_up") else 1


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = out if out is not None else sys.stdout
    if args.command == "campaign":  # our API's token, not a Twilio account
        from callsim.outbound_cli import run_campaign_command

        return run_campaign_command(parser, args, stream)
    _require_credentials(parser, args)
    if args.command == "twilio-api":
        from callsim.outbound_cli import run_twilio_api

        return run_twilio_api(parser, args, stream)
    if args.command == "call":
        return asyncio.run(_call(args, stream))
    from callsim.load_cli import run_load_command

    return run_load_command(args, stream)
