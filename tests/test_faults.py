"""Calls survive faults: the CI-sized run of the fault-injection suite, and its parts.

`test_fault_suite_smoke_ci_sized` is the CI-sized run (`python -m faultsuite --smoke`: 10 calls,
one worker kill -9 mid-turn, one Redis restart, about a minute; then 8 relay-mode calls of 4
lines through a kill -9 of an edge process, a worker kill -9 and a Redis restart, under a
minute; then 12 calls placed through POST /v1/calls at callsim's Twilio stand-in while the edge
process serving some of those requests is killed -9, and a worker, about 25 s). The full run is
`python -m faultsuite` (`make faults`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from botsim.bots import GREETING
from botsim.config import BotsimConfig
from botsim.server import BotsimServer
from callsim.call import IDEMPOTENCY_HEADER, CallResult, WebhookRecord, WebhookRetry, place_call
from callsim.relay import RelayState
from callsim.script import HANG_UP
from devstack.processes import free_port
from faultsuite.analysis import Phrases, Tally, analyse_call, count_duplicates, relay_turn_ids
from faultsuite.caller import Caller
from faultsuite.outbound import (
    PERSON_SAYS,
    VOICEMAIL,
    OutboundResult,
    check,
    expected_heard,
    placements,
)
from faultsuite.transport import ConnectRetry
from tests.helpers import Http

ROOT = Path(__file__).resolve().parent.parent
PHRASES = Phrases(hold="Hold on.", trouble="Trouble, say again.", fallback="Cannot answer.")
SID = "CA" + "a" * 32


@pytest.mark.timeout(400)
def test_fault_suite_smoke_ci_sized(tmp_path: Path) -> None:
    """CI-sized: nothing lost, nothing twice at the bot, nothing but valid TwiML."""
    report_path = tmp_path / "faults.json"
    proc = subprocess.run(
        [sys.executable, "-m", "faultsuite", "--smoke", "--report", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert report_path.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(report_path.read_text())
    totals = report["totals"]
    phase, relay, outbound = report["phases"]
    detail = json.dumps(report["phases"], indent=1)[-6000:]
    assert phase["errors"] == relay["errors"] == outbound["errors"] == [], detail
    assert totals["turns"] > 0 and totals["answered"] > 0, detail
    assert totals["lost"] == 0, detail
    assert totals["duplicated"] == 0, detail
    assert totals["non_twiml"] == 0, detail
    assert [f["kind"] for f in phase["faults"]] == ["kill -9 worker", "restart redis"], detail
    # Retried webhooks (every third call): each a turn the bot saw once, its answer heard once.
    assert phase["retried"] > 0 and phase["heard_twice"] == 0, detail
    assert phase["retried_real"] > phase["retried"] // 2, detail
    kinds = [f["kind"] for f in relay["faults"]]
    assert kinds == ["kill -9 edge process", "kill -9 worker", "restart redis"], detail
    # Every relay call went on past the kill and completed its script.
    assert relay["completed"] == relay["calls"] > 0, detail
    assert relay["reconnects"] >= relay["faults"][0]["calls_hit"] > 0, detail
    # Outbound: the kill cut API requests in flight; sent again with their keys, every call was
    # placed once, is known, and was played out (people talked, machines got the voicemail).
    assert [f["kind"] for f in outbound["faults"]] == ["kill -9 edge process", "kill -9 worker"]
    assert outbound["faults"][0]["mid_turn"], detail  # it struck requests in flight
    assert outbound["resent"] > 0, detail
    assert outbound["problems"] == [], detail
    assert outbound["placed"] == outbound["calls"] > 0 and outbound["twice"] == 0, detail
    assert outbound["unknown"] == 0, detail
    assert outbound["persons_ok"] == outbound["persons"] > 0, detail
    assert outbound["machines_ok"] == outbound["machines"] > 0, detail
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


# -- botsim's introspection route ---------------------------------------------------------------


async def test_botsim_turns_counts_turn_ids_and_unanswered_turns() -> None:
    async with BotsimServer(BotsimConfig(port=0, stall_rate=1.0)) as sim:
        async with Http(sim.base_url) as http:
            key = (await http.post("/users", json={})).json()["key"]
            headers = {"x-user-key": key}
            conv = {"id": "conv-1"}
            await http.post("/conversations/get-or-create", json=conv, headers=headers)
            for tid in ("CA1:1", "CA1:1", "CA1:2"):
                body = {
                    "conversationId": "conv-1",
                    "payload": {"type": "text", "text": "hi"},
                    "metadata": {"voicebridge": {"turnId": tid}},
                }
                assert (await http.post("/messages", json=body, headers=headers)).is_success
            view = (await http.get("/_botsim/turns")).json()["conversations"]["conv-1"]
    assert view["turnIds"] == {"CA1:1": 2, "CA1:2": 1}
    assert view["unanswered"] == ["CA1:1", "CA1:1", "CA1:2"]  # stall_rate=1: never answered
    tally = Tally()
    count_duplicates({"conv-1": view}, tally)
    assert tally.duplicated == 1


async def test_botsim_turns_is_spared_by_injected_errors() -> None:
    async with BotsimServer(BotsimConfig(port=0, error_rate=1.0)) as sim:
        async with Http() as http:
            assert (await http.get(f"{sim.base_url}/_botsim/turns")).status_code == 200
            assert (await http.post(f"{sim.base_url}/users", json={})).status_code == 500


# -- the callers' connect retries ---------------------------------------------------------------


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="up")


async def test_a_refused_connection_is_retried_until_the_port_opens() -> None:
    port = free_port()
    retry = ConnectRetry(retry_s=10.0)
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app)
    await runner.setup()

    async def open_port_later() -> None:
        await asyncio.sleep(0.3)  # the port stays closed this long (an edge restarting)
        await web.TCPSite(runner, "127.0.0.1", port).start()

    opener = asyncio.create_task(open_port_later())
    try:
        async with (
            retry.session(timeout_s=15.0) as session,
            session.get(f"http://127.0.0.1:{port}/") as resp,
        ):
            assert resp.status == 200 and await resp.text() == "up"
        assert retry.connect_retries >= 2
    finally:
        opener.cancel()
        await runner.cleanup()


async def test_a_retried_webhook_times_from_when_its_first_attempt_is_on_the_wire() -> None:
    """Twilio's retry timer runs from the request going out: while the first attempt's
    connection is still being retried (an edge restarting), no retry is sent, so a retry never
    reaches the edge before the attempt it repeats."""
    port = free_port()
    seen: list[str] = []

    async def voice(request: web.Request) -> web.Response:
        seen.append(request.headers[IDEMPOTENCY_HEADER])
        return web.Response(text="<Response><Hangup/></Response>", content_type="text/xml")

    app = web.Application()
    app.router.add_post("/twilio/voice", voice)
    runner = web.AppRunner(app)
    await runner.setup()

    async def open_port_later() -> None:
        await asyncio.sleep(0.5)  # longer than the retry's 0.2 s
        await web.TCPSite(runner, "127.0.0.1", port).start()

    opener = asyncio.create_task(open_port_later())
    try:
        async with ConnectRetry(retry_s=10.0).session(timeout_s=15.0) as session:
            result = await place_call(
                session,
                f"http://127.0.0.1:{port}/twilio/voice",
                account_sid=SID.replace("CA", "AC"),
                auth_token="token",
                caller=[],
                retry=WebhookRetry(after_s=0.2, cut_first=False, kinds=frozenset({"start"})),
            )
    finally:
        opener.cancel()
        await runner.cleanup()
    assert result.outcome == "hangup_by_app"
    assert len(seen) == 1 and result.webhooks[0].retried_at == 0.0, seen


async def test_connect_retries_give_up_after_their_budget() -> None:
    retry = ConnectRetry(retry_s=0.2)
    async with retry.session(timeout_s=15.0) as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(f"http://127.0.0.1:{free_port()}/")
    assert retry.connect_retries >= 1


# -- the turn accounting ------------------------------------------------------------------------


def _gather(turn: int, line: str, said: tuple[str, ...]) -> WebhookRecord:
    url = f"http://x/twilio/gather?turn={turn}&silent=0"
    return WebhookRecord("gather", url, "POST", {"SpeechResult": line}, 0.0, status=200, said=said)


def _call(lines: list[str], responses: list[tuple[str, ...]]) -> tuple[Caller, CallResult]:
    caller = Caller(0, lines, PHRASES.trouble, drain_s=0, drain_poll_s=0, spoken=list(lines))
    result = CallResult(SID, outcome="caller_hung_up")
    result.webhooks.append(
        WebhookRecord(
            "start", "http://x/twilio/voice", "POST", {}, 0.0, status=200, said=responses[0]
        )
    )
    for seq, (line, said) in enumerate(zip(lines, responses[1:], strict=False), start=1):
        result.webhooks.append(_gather(seq, line, said))
    for said in responses:
        result.transcript.extend(("bot_say", text) for text in said)
    return caller, result


def test_every_turn_answered_in_order_late_or_not() -> None:
    lines = ["caller 0 line 1 maple", "caller 0 line 2 river"]
    caller, result = _call(
        lines,
        [(GREETING,), ("Hold on.",), (f"You said: {lines[0]} You said: {lines[1]}",)],
    )
    tally = Tally()
    analyse_call(caller, result, PHRASES, None, tally)
    assert (tally.turns, tally.answered, tally.answered_late, tally.lost) == (3, 3, 1, 0)


def test_fallback_covers_a_turn_a_missing_answer_is_lost_or_stalled() -> None:
    lines = ["caller 0 line 1 maple", "caller 0 line 2 river", "caller 0 line 3 pepper"]
    caller, result = _call(
        lines, [(GREETING,), ("Cannot answer.",), ("",), (f"You said: {lines[2]}",)]
    )
    tally = Tally()
    analyse_call(caller, result, PHRASES, None, tally)
    assert (tally.answered, tally.fallback, tally.lost, tally.stalled) == (2, 1, 1, 0)
    assert tally.problems[0]["turn_id"] == f"{SID}:2"
    # The same call when botsim says the bot itself never answered turn 2: a stall, not a loss.
    tally = Tally()
    analyse_call(caller, result, PHRASES, {"unanswered": [f"{SID}:2"]}, tally)
    assert (tally.answered, tally.fallback, tally.lost, tally.stalled) == (2, 1, 0, 1)


def test_a_call_that_ended_in_an_application_error_is_non_twiml() -> None:
    caller, result = _call([], [(GREETING,)])
    result.outcome, result.error = "error", "application error: HTTP 502"
    tally = Tally()
    analyse_call(caller, result, PHRASES, None, tally)
    assert tally.non_twiml == 1 and tally.lost == 0


async def test_caller_repeats_after_trouble_and_waits_for_late_answers() -> None:
    caller = Caller(3, ["caller 3 line 1 maple"], PHRASES.trouble, drain_s=5, drain_poll_s=0)
    assert await caller([GREETING]) == "caller 3 line 1 maple"
    assert await caller([PHRASES.trouble]) == "caller 3 line 1 maple"
    assert caller.repeats == 1 and caller.spoken == ["caller 3 line 1 maple"]
    assert await caller(["Hold on."]) is None  # lines done, one unanswered: silence
    assert await caller(["You said: caller 3 line 1 maple"]) is HANG_UP
    assert caller.all_answered()


# -- relay mode ---------------------------------------------------------------------------------


def _relay_call(events: list[tuple[str, ...]]) -> CallResult:
    result = CallResult(SID, outcome="caller_hung_up", relay=RelayState())
    result.transcript.extend(events)
    return result


def test_relay_turns_answered_across_sessions_late_after_a_hold() -> None:
    lines = ["caller 0 line 1 maple", "caller 0 line 2 river"]
    caller = Caller(0, lines, PHRASES.trouble, drain_s=0, drain_poll_s=0, spoken=list(lines))
    caller._next = len(lines)
    caller.answered = set(lines)
    result = _relay_call(
        [
            ("relay_connect", "ws://x/twilio/relay"),
            ("bot_reply", GREETING),
            ("caller_say", lines[0]),
            ("bot_reply", f"You said: {lines[0]}"),
            ("caller_say", lines[1]),
            ("relay_end", "failed"),  # the edge process died with the turn in flight
            ("relay_connect", "ws://x/twilio/relay"),
            ("bot_reply", f"You said: {lines[1]}"),  # a late reply, spoken at setup
        ]
    )
    tally = Tally()
    ids = relay_turn_ids([(SID, lines[0], f"{SID}:1"), (SID, lines[1], f"{SID}:2")])
    assert ids[SID][lines[1]] == [f"{SID}:2"]
    analyse_call(caller, result, PHRASES, None, tally, ids[SID])
    assert (tally.turns, tally.answered, tally.answered_late, tally.lost) == (3, 3, 1, 0)
    assert tally.completed == 1


def test_a_relay_turn_never_answered_is_lost_and_says_whether_the_bot_saw_it() -> None:
    lines = ["caller 0 line 1 maple"]
    caller = Caller(0, lines, PHRASES.trouble, drain_s=0, drain_poll_s=0, spoken=list(lines))
    caller._next = 1
    result = _relay_call([("bot_reply", GREETING), ("caller_say", lines[0])])
    tally = Tally()
    bot_view = {"turnIds": {f"{SID}:0": 1, f"{SID}:1": 1}, "unanswered": []}
    analyse_call(caller, result, PHRASES, bot_view, tally, {lines[0]: [f"{SID}:1"]})
    assert tally.lost == 1 and tally.completed == 0
    assert tally.problems[0]["turn_id"] == f"{SID}:1" and tally.problems[0]["at_bot"] is True


async def test_relay_caller_says_again_a_line_its_dead_session_never_sent() -> None:
    caller = Caller(1, ["caller 1 line 1 maple", "caller 1 line 2 river"], PHRASES.trouble, 5, 0)
    caller.track_said = True
    assert await caller([GREETING]) == "caller 1 line 1 maple"
    # The socket died while the caller was thinking: callsim never sent it (no caller_say).
    assert await caller([]) == "caller 1 line 1 maple"
    caller.on_event(("caller_say", "caller 1 line 1 maple"))
    assert await caller(["You said: caller 1 line 1 maple"]) == "caller 1 line 2 river"
    assert caller.resaid == 1 and caller.repeats == 0


async def test_relay_caller_says_a_line_again_when_asked_and_the_stream_tells_if_it_was_had() -> (
    None
):
    line = "caller 2 line 1 maple"
    caller = Caller(2, [line], PHRASES.trouble, drain_s=5, drain_poll_s=0)
    caller.track_said, caller.reprompt_phrase = True, "Say it again?"
    assert await caller([GREETING]) == line
    caller.on_event(("caller_say", line))
    assert await caller(["Say it again?"]) == line  # its words went into a dying socket
    assert caller.reprompted == [line]
    said = [("bot_reply", GREETING), ("caller_say", line)]
    again = [("caller_say", line), ("bot_reply", f"You said: {line}")]
    died = [("relay_end", "failed"), ("relay_connect", "ws://x"), ("bot_reply", "Say it again?")]
    result = _relay_call([*said, *died, *again])
    tally = Tally()
    analyse_call(caller, result, PHRASES, None, tally, {line: [f"{SID}:1"]})
    assert (tally.said_again, tally.lost, tally.answered) == (1, 0, 2)
    # The edge had written the first words and still asked for them: that turn is lost.
    tally = Tally()
    analyse_call(caller, result, PHRASES, None, tally, {line: [f"{SID}:1", f"{SID}:2"]})
    assert (tally.said_again, tally.lost) == (0, 1)
    # The socket lived on and the edge asked again: it dropped the words (lost).
    result = _relay_call([*said, ("bot_reply", "Say it again?"), *again])
    tally = Tally()
    analyse_call(caller, result, PHRASES, None, tally, {line: [f"{SID}:1"]})
    assert (tally.said_again, tally.lost) == (0, 1)


# -- the outbound phase's checks -----------------------------------------------------------------


def _played(sid: str, to: str, kind: str, heard: list[str], **extra: object) -> dict[str, object]:
    seen: dict[str, object] = {
        "sid": sid, "to": to, "kind": kind, "done": True, "heard": heard,
        "outcome": "hangup_by_app", "first_words_at": 100.5, "error": None, "webhooks": 1,
        "status": "completed", "callbacks": [{"event": "completed"}],
    }  # fmt: skip
    return {**seen, **extra}


def test_outbound_check_passes_a_clean_run_and_names_each_breach() -> None:
    person_heard = [GREETING, *(expected_heard(line) for line in PERSON_SAYS)]
    calls = placements(4, "t")
    assert [c.kind for c in calls] == ["person", "person", "person", "machine"]
    for i, call in enumerate(calls):
        call.sid, call.due_at = f"CA{i:032d}", 100.0
    person = {"status": "completed", "answeredBy": "human"}
    machine = {"status": "completed", "answeredBy": "machine_end_beep"}
    played = [
        _played(calls[0].sid or "", calls[0].to, "person", person_heard),
        _played(calls[1].sid or "", calls[1].to, "person", person_heard),
        _played(calls[2].sid or "", calls[2].to, "person", person_heard),
        _played(calls[3].sid or "", calls[3].to, "machine", [VOICEMAIL]),
    ]
    states = {c.sid or "": person for c in calls[:3]} | {calls[3].sid or "": machine}
    clean = OutboundResult("outbound", calls=4)
    check(calls, played, states, clean)
    assert clean.problems == [] and clean.ok
    assert (clean.persons_ok, clean.machines_ok, clean.first_words_ms["p50"]) == (3, 1, 500.0)

    # Call 0 never got its callSid (its key stuck at 409); call 1's number was called twice;
    # call 2 missed an answer; the machine was talked to; call 3's status never became final.
    calls[0].sid, calls[0].statuses = None, [409, 409]
    twice = _played("CA" + "f" * 32, calls[1].to, "person", person_heard)
    played[2]["heard"] = person_heard[:2] + person_heard[3:]
    played[3]["heard"] = [GREETING, VOICEMAIL]
    states[calls[3].sid or ""] = {"status": "in-progress"}
    broken = OutboundResult("outbound", calls=4)
    check(calls, [*played, twice], states, broken)
    problems = {p["call"]: p["problem"] for p in broken.problems}
    assert problems[0].startswith("never got its callSid")
    assert problems[1] == f"the stand-in saw 2 calls to {calls[1].to}, not 1"
    assert problems[2] == f"lines never answered: {[PERSON_SAYS[1]]}"
    assert problems[3].startswith("no final status")
    assert (broken.placed, broken.twice, broken.unknown, broken.in_progress) == (3, 1, 1, 2)
    assert not broken.ok
    played[3]["heard"] = [GREETING, VOICEMAIL]
    states[calls[3].sid or ""] = machine
    talked = OutboundResult("outbound", calls=4)
    check(calls[3:], played[3:], states, talked)
    assert [p["problem"] for p in talked.problems] == ["a conversation with a machine"]
