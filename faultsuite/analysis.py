"""What happened to every turn: matched from what each caller heard, and what the bot saw.

Replies of a call are spoken in turn order (late ones at a later webhook, still in order), so a
call's transcript is walked once: each turn's answer is its echo ("You said: <its line>", or the
greeting for the call's start); a fallback phrase heard between two answers covers the turns
left unanswered in between. A turn nobody answered is "stalled" when botsim says the bot itself
never replied to it (its --stall-rate), "lost" otherwise: the bridge dropped it.

Relay mode is counted the same way, over the talk cycles the caller heard (callsim's
`bot_reply` events, across every session of the call): a turn's id is read from the turn
stream (its call and words; `relay_turn_ids`), and it was answered late when the first reply
after the caller said it was not its answer (the hold phrase, or a later session's late
replies). A lost relay turn's problem says whether the bot ever saw it (`at_bot`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botsim.bots import GREETING
from callsim.call import CallResult
from faultsuite.caller import Caller

TURN_CLASSES = ("answered", "fallback", "stalled", "lost")
NON_TWIML_OUTCOMES = frozenset({"error", "invalid_twiml"})


@dataclass
class Phrases:
    hold: str
    trouble: str
    fallback: str
    reprompt: str = "Sorry, I didn't catch that. Could you say it again?"


@dataclass
class Tally:
    turns: int = 0
    answered: int = 0
    answered_late: int = 0  # answered, but not in the response to the turn's own webhook
    fallback: int = 0
    stalled: int = 0
    lost: int = 0
    duplicated: int = 0  # turns the bot saw more than once
    non_twiml: int = 0  # calls that got an HTTP error, no answer or invalid TwiML
    calls: int = 0
    repeats: int = 0  # lines said again after the trouble phrase
    completed: int = 0  # calls that said every line and hung up themselves, every line answered
    sessions: int = 0  # relay mode: ConversationRelay sessions, over all calls
    reconnects: int = 0  # relay mode: sessions that followed a failed one (SessionStatus=failed)
    resaid: int = 0  # relay mode: lines given again, their session gone before they were said
    # relay mode: lines said again when the edge asked (the reprompt) after a reconnect: their
    # first words went into the socket of a process as it was killed, and never reached the edge
    said_again: int = 0
    out_of_order: int = 0  # answers heard before an earlier turn's answer
    retried: int = 0  # Gather webhooks sent again as Twilio retries them (WebhookRetry)
    retried_real: int = 0  # of those, answered with the line's own reply (not the hold phrase)
    heard_twice: int = 0  # lines of retried webhooks whose answer the caller heard twice
    call_outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)  # worth a look, not failures

    def as_dict(self) -> dict[str, Any]:
        skip = ("call_outcomes", "problems", "notes")
        out = {k: v for k, v in self.__dict__.items() if k not in skip}
        out["call_outcomes"] = dict(self.call_outcomes)
        out["problems"] = self.problems[:50]
        out["notes"] = self.notes[:50]
        return out


def _turn_ids(result: CallResult) -> dict[str, str]:
    """line -> turn id, from the Gather actions that carried it."""
    out: dict[str, str] = {}
    for record in result.webhooks:
        speech = record.params.get("SpeechResult")
        if record.kind != "gather" or not speech:
            continue
        turn = parse_qs(urlsplit(record.url).query).get("turn", ["?"])[0]
        out.setdefault(speech, f"{result.call_sid}:{turn}")
    return out


def relay_turn_ids(turns: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, list[str]]]:
    """call sid -> words -> turn ids (in stream order), from (call_sid, text, turn_id) of the
    stream's turns."""
    out: dict[str, dict[str, list[str]]] = {}
    for call_sid, text, turn_id in turns:
        ids = out.setdefault(call_sid, {}).setdefault(text, [])
        if turn_id not in ids:
            ids.append(turn_id)
    return out


def _relay_answered_on_time(result: CallResult, line: str) -> bool:
    """The first reply heard after the caller last said `line` was its answer, in the same
    session (one a later session speaks came late, past the socket's loss)."""
    said_at = max(
        (i for i, e in enumerate(result.transcript) if e[:2] == ("caller_say", line)), default=-1
    )
    for event in result.transcript[said_at + 1 :]:
        if event[0] == "relay_connect":
            return False
        if event[0] == "bot_reply" and len(event) > 1 and event[1]:
            return f"You said: {line}" in event[1]
    return False


def _answered_on_time(result: CallResult, line: str) -> bool:
    if result.relay is not None:
        return _relay_answered_on_time(result, line)
    echo = f"You said: {line}"
    for record in result.webhooks:
        if record.params.get("SpeechResult") == line and record.status == 200:
            return any(echo in text for text in record.said)
    return False


def analyse_call(
    caller: Caller,
    result: CallResult,
    phrases: Phrases,
    bot_view: dict[str, Any] | None,
    tally: Tally,
    relay_ids: Mapping[str, list[str]] | None = None,
) -> None:
    """`relay_ids`: words -> turn ids of this call's turns (relay mode, from the stream)."""
    tally.calls += 1
    tally.repeats += caller.repeats
    tally.resaid += caller.resaid
    if result.relay is not None:
        sessions = result.relay.sessions
        tally.sessions += len(sessions)
        tally.reconnects += sum(1 for s in sessions[:-1] if s.status == "failed")
    tally.call_outcomes[result.outcome] += 1
    if result.outcome in NON_TWIML_OUTCOMES:
        tally.non_twiml += 1
        tally.problems.append(
            {"call_sid": result.call_sid, "problem": result.outcome, "error": result.error}
        )
    if result.outcome == "hangup_by_app":
        said = result.bot_said()
        tally.notes.append(
            {"call_sid": result.call_sid, "note": "ended by the app", "last": said[-1:]}
        )
    pattern = re.compile(
        "|".join(
            [
                f"(?P<greeting>{re.escape(GREETING)})",
                r"You said: (?P<echo>caller \d+ line \d+ [a-z]+)",
                f"(?P<fallback>{re.escape(phrases.fallback)})",
            ]
        )
    )
    heard: list[str] = []  # "greeting", a line, or "fallback", in the order spoken
    for text in result.bot_said():
        for m in pattern.finditer(text):
            heard.append(m.group("echo") or ("greeting" if m.group("greeting") else "fallback"))
    if result.relay is not None:
        turn_ids = {text: ids[0] for text, ids in (relay_ids or {}).items()}
        _said_again(caller, result, relay_ids or {}, tally)
    else:
        turn_ids = _turn_ids(result)
    seen_by_bot = set((bot_view or {}).get("turnIds", {}))
    # Only turns the bridge accepted count; a call that never got past its greeting has one.
    turns = ["greeting", *caller.spoken]
    unanswered_by_bot = set((bot_view or {}).get("unanswered", []))
    waiting: list[str] = []
    pos = 0

    def settle(upto: int) -> None:
        nonlocal pos
        fallbacks = sum(1 for h in heard[pos:upto] if h == "fallback")
        for turn in waiting:
            tid = f"{result.call_sid}:0" if turn == "greeting" else turn_ids.get(turn, "")
            if fallbacks:
                fallbacks -= 1
                tally.fallback += 1
            elif tid in unanswered_by_bot:
                tally.stalled += 1
                tally.notes.append(
                    {"call_sid": result.call_sid, "note": "bot never answered", "turn_id": tid}
                )
            else:
                tally.lost += 1
                problem: dict[str, Any] = {"call_sid": result.call_sid, "problem": "lost"}
                problem |= {"turn": turn, "turn_id": tid, "at_bot": tid in seen_by_bot}
                tally.problems.append(problem)
        waiting.clear()

    _retried(result, heard, tally)
    for turn in turns:
        tally.turns += 1
        try:
            at = heard.index(turn, pos)
        except ValueError:
            if turn in heard[:pos]:  # answered, but before an earlier turn's answer
                tally.answered += 1
                tally.out_of_order += 1
                tally.problems.append(
                    {"call_sid": result.call_sid, "problem": "out_of_order", "turn": turn}
                )
            else:
                waiting.append(turn)
            continue
        settle(at)
        pos = at + 1
        tally.answered += 1
        if turn != "greeting" and not _answered_on_time(result, turn):
            tally.answered_late += 1
    settle(len(heard))
    finished = result.outcome == "caller_hung_up" and caller.done_speaking()
    if finished and caller.all_answered():
        tally.completed += 1
    else:
        tally.notes.append(
            {
                "call_sid": result.call_sid,
                "note": "did not complete its script",
                "outcome": result.outcome,
                "said": f"{len(caller.spoken)}/{len(caller.lines)}",
                "error": result.error,
            }
        )


def _retried(result: CallResult, heard: list[str], tally: Tally) -> None:
    """A retried webhook is one turn: its answer is the real reply, heard once."""
    for record in result.webhooks:
        line = record.params.get("SpeechResult")
        if not record.retried_at or not line:
            continue
        tally.retried += 1
        if f"You said: {line}" in record.body:
            tally.retried_real += 1
        if heard.count(line) > 1:
            tally.heard_twice += 1
            tally.problems.append(
                {"call_sid": result.call_sid, "problem": "retried, heard twice", "turn": line}
            )


def _said_again(
    caller: Caller, result: CallResult, relay_ids: Mapping[str, list[str]], tally: Tally
) -> None:
    """A line said again at the reprompt is fine only if its first words went into a socket
    that failed before any reply (its process killed), and the edge never had them: the stream
    holds the line once. Otherwise the edge dropped the turn and asked for it again (lost)."""
    for line in caller.reprompted:
        ids = relay_ids.get(line, [])
        if len(ids) > 1 or not _died_after_saying(result, line):
            tally.lost += 1
            tally.problems.append(
                {
                    "call_sid": result.call_sid,
                    "problem": "lost",
                    "why": "asked to say it again, yet it had the turn or its socket lived on",
                    "turn": line,
                    "turn_ids": ids,
                }
            )
        else:
            tally.said_again += 1
            tally.notes.append(
                {"call_sid": result.call_sid, "note": "said again at the reprompt", "turn": line}
            )


def _died_after_saying(result: CallResult, line: str) -> bool:
    """The session failed after the caller first said `line`, before any reply."""
    events = result.transcript
    first = next((i for i, e in enumerate(events) if e[:2] == ("caller_say", line)), None)
    if first is None:
        return False
    for event in events[first + 1 :]:
        if event[:2] == ("relay_end", "failed"):
            return True
        if event[0] == "bot_reply":
            return False
    return False


def count_duplicates(bot_turns: dict[str, Any], tally: Tally) -> None:
    for conv_id, view in bot_turns.items():
        for tid, count in view.get("turnIds", {}).items():
            if count > 1:
                tally.duplicated += 1
                tally.problems.append(
                    {"conversation": conv_id, "problem": "duplicated", "turn_id": tid, "n": count}
                )
