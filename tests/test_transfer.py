"""Transfer to a person, through real processes: botsim's transfer scenario sends
`<transfer to="NAME"/>`, the edge (gunicorn) dials only what TRANSFER_TARGETS lists, callsim
plays Twilio and the person dialled (answers, busy, no answer), in gather and relay mode."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis

from callsim.call import CallResult
from callsim.script import ScriptFn
from callsim.signing import SIGNATURE_HEADER, sign
from devstack.stack import Stack, StackConfig
from edge.settings import DEFAULT_TRANSFER_REFUSED, parse_transfer_targets
from shared import keys
from shared.config import ConfigError
from shared.pb import voicebridge_pb2 as pb
from tests.helpers import Response, call, fetch, start_stack
from worker.reply_stream import ReplyStream, unresolved_marker_at
from worker.speech import Speech

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "botsim" / "scenarios" / "transfer.json"
SALES = "+14155550123"
SUPPORT = "sip:help@example.com"
TARGETS = f"sales={SALES}, Support={SUPPORT}"
GREETING = "Hello, this is the front desk. Who would you like to talk to?"
ANYTHING_ELSE = "Anything else?"


def _config(mode: str) -> StackConfig:
    return StackConfig(
        workers=1,
        botsim_args=("--scenario", str(SCENARIO)),
        edge_env={"VOICE_MODE": mode, "TRANSFER_TARGETS": TARGETS, "TIMEOUT": "2"},
        worker_env={"BOT_QUIET_MS": "100"},
    )


@pytest.fixture(scope="module")
def gather_stack() -> Iterator[Stack]:
    s = start_stack(_config("gather"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def relay_stack() -> Iterator[Stack]:
    s = start_stack(_config("relay"))
    yield s
    s.stop()


def caller(first: str) -> ScriptFn:
    """Says `first` to the greeting, stays quiet while a transfer goes through, and says bye
    once the bot asks for anything else (after a refused or failed transfer)."""

    def reply(heard: Sequence[str]) -> str | None:
        said = " ".join(heard)
        if GREETING in said:
            return first
        if ANYTHING_ELSE in said or DEFAULT_TRANSFER_REFUSED in said:
            return "bye"
        return None

    return reply


def dials(result: CallResult) -> list[tuple[str, ...]]:
    return [e[1:] for e in result.transcript if e[0] == "dial"]


def dial_actions(result: CallResult) -> list[dict[str, str]]:
    return [w.params for w in result.webhooks if w.kind == "dial_action"]


def spoken(result: CallResult) -> str:
    """Everything the caller heard: every <Say>, every relay token."""
    tokens = [e[1] for e in result.transcript if e[0] == "bot_token"]
    return " ".join([*result.bot_said(), *tokens])


def assert_no_marker_heard(result: CallResult) -> None:
    heard = spoken(result).lower()
    assert "transfer" not in heard.replace("transferred", ""), heard
    assert "<" not in heard and "never said" not in heard, heard


# -- the marker, and TRANSFER_TARGETS ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "said", "name"),
    [
        ('One moment. <transfer to="sales"/> never', ["One moment."], "sales"),
        ("Ok < TRANSFER  TO = 'Support' / >", ["Ok"], "Support"),
        ('<transfer to="+14155550100"/>', [], "+14155550100"),
        ("Bye <hangup/> <transfer to='sales'/>", ["Bye"], ""),
    ],
)
def test_transfer_marker_is_cut_like_hangup(text: str, said: list[str], name: str) -> None:
    speech = Speech()
    speech.add(text)
    speech.add("said after the marker")
    assert speech.sentences == said
    assert speech.transfer_to == name


@pytest.mark.parametrize(
    "fragment", ["<", "<trans", "<transfer ", '< transfer to = "sa', "<Transfer to='x' /"]
)
def test_a_possible_transfer_marker_start_is_held_back(fragment: str) -> None:
    assert unresolved_marker_at(f"Hello {fragment}") == len("Hello ")


def test_transfer_targets_parse_numbers_and_sip_uris() -> None:
    assert parse_transfer_targets(TARGETS) == {"sales": SALES, "support": SUPPORT}
    assert parse_transfer_targets("") == {}


@pytest.mark.parametrize(
    "bad", ["sales=555-0123", "sales", "=+14155550123", "x=sip:nohost", "a=+14155550123,A=+1415"]
)
def test_a_bad_transfer_target_is_a_config_error_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="TRANSFER_TARGETS: bad entry"):
        parse_transfer_targets(bad)


def test_a_bad_transfer_targets_entry_stops_the_edge_with_one_line() -> None:
    env = {
        **os.environ,
        "PUBLIC_URL": "https://voice.example.com",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "token",
        "TRANSFER_TARGETS": f"sales={SALES},support=call-me-maybe",
    }
    done = subprocess.run(
        [sys.executable, "-m", "edge"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "TRANSFER_TARGETS" in lines[0] and "support=call-me-maybe" in lines[0]


# -- gather mode ---------------------------------------------------------------------------------
async def test_gather_a_listed_target_is_dialled_and_a_completed_call_hangs_up(
    gather_stack: Stack,
) -> None:
    result = await call(gather_stack, ["sales please"])
    assert result.outcome == "hangup_by_app", result.transcript
    assert result.bot_said() == [GREETING, "Putting you through to sales."]
    assert dials(result) == [(SALES, "completed")]
    dialled = next(w for w in result.webhooks if "<Dial" in w.body)
    dial = ET.fromstring(dialled.body).find("Dial")
    assert dial is not None and dial.findtext("Number") == SALES
    assert dial.get("action", "").startswith(f"{gather_stack.public_url}/twilio/dial-status?")
    (action,) = dial_actions(result)
    assert action["DialCallStatus"] == "completed" and int(action["DialCallDuration"]) > 0
    last = result.webhooks[-2]  # the dial action's answer (the status callback comes after)
    assert last.kind == "dial_action" and ET.fromstring(last.body).find("Hangup") is not None
    assert_no_marker_heard(result)


async def test_gather_sip_target_any_case_and_quotes(gather_stack: Stack) -> None:
    result = await call(gather_stack, ["support"])
    assert dials(result) == [(SUPPORT, "completed")]
    dialled = next(w for w in result.webhooks if "<Dial" in w.body)
    assert ET.fromstring(dialled.body).findtext("Dial/Sip") == SUPPORT
    assert result.bot_said()[-1] == "Connecting you to support."


@pytest.mark.parametrize("outcome", ["busy", "no-answer"])
async def test_gather_busy_or_no_answer_tells_the_bot_and_the_call_goes_on(
    gather_stack: Stack, outcome: str
) -> None:
    result = await call(gather_stack, ["sales", "bye"], dial_outcomes={SALES: outcome})
    assert dials(result) == [(SALES, outcome)]
    said = result.bot_said()
    # The bot got transfer_failed (target and status) and its reply was spoken, then a Gather.
    assert said[2] == f"Sorry, sales did not pick up: {outcome}. {ANYTHING_ELSE}", said
    assert said[-1] == "Goodbye!"
    back = next(w for w in result.webhooks if w.kind == "dial_action")
    assert ET.fromstring(back.body).find("Gather") is not None
    assert result.outcome == "hangup_by_app"


@pytest.mark.parametrize(
    ("words", "before"),
    [("nowhere", "One moment."), ("number +19005550199", "Dialling +19005550199.")],
)
async def test_gather_an_unlisted_name_or_a_raw_number_dials_nothing(
    gather_stack: Stack, words: str, before: str
) -> None:
    result = await call(gather_stack, [words, "bye"])
    assert dials(result) == [] and dial_actions(result) == []
    assert all("<Dial" not in w.body for w in result.webhooks)
    said = result.bot_said()
    assert said[1] == f"{before} {DEFAULT_TRANSFER_REFUSED}", said
    assert said[-1] == "Goodbye!"  # the call went on
    assert_no_marker_heard(result)


# -- relay mode ----------------------------------------------------------------------------------
async def test_relay_a_listed_target_ends_with_handoff_and_the_action_dials(
    relay_stack: Stack,
) -> None:
    result = await call(relay_stack, caller("sales please"))
    assert result.relay is not None, result.transcript
    assert result.outcome == "hangup_by_app", result.transcript
    ends = [e[1] for e in result.transcript if e[0] == "relay_app_end"]
    assert ends == ['{"reason": "transfer", "target": "sales"}']
    assert "Putting you through to sales." in result.bot_said()
    assert dials(result) == [(SALES, "completed")]
    kinds = [w.kind for w in result.webhooks]
    assert kinds == ["start", "relay_action", "dial_action", "status"], kinds
    dial = ET.fromstring(result.webhooks[1].body).find("Dial")
    assert dial is not None and dial.findtext("Number") == SALES
    assert_no_marker_heard(result)


async def test_relay_marker_split_across_deltas_is_never_spoken(relay_stack: Stack) -> None:
    result = await call(relay_stack, caller("streamed"))
    tokens = [e[1] for e in result.transcript if e[0] == "bot_token"]
    # botsim streams word by word: the marker came in pieces, none of which was sent.
    assert "".join(tokens).strip().endswith("Streaming you to sales now."), tokens
    assert dials(result) == [(SALES, "completed")]
    assert_no_marker_heard(result)


async def test_relay_busy_comes_back_to_the_bot_in_a_new_session(relay_stack: Stack) -> None:
    result = await call(relay_stack, caller("sales"), dial_outcomes={SALES: "busy"})
    assert result.relay is not None, result.transcript
    assert dials(result) == [(SALES, "busy")]
    said = result.bot_said()
    assert f"Sorry, sales did not pick up: busy. {ANYTHING_ELSE}" in said, said
    assert GREETING == said[0] and said.count(GREETING) == 1  # no second greeting
    assert said[-1] == "Goodbye!"
    assert [s.status for s in result.relay.sessions] == ["ended", "ended"]


async def test_relay_an_unlisted_target_is_refused_and_the_call_goes_on(
    relay_stack: Stack,
) -> None:
    result = await call(relay_stack, caller("number +19005550199"))
    assert dials(result) == []
    said = result.bot_said()
    # In the talk cycle of the bot's text, not as a cycle of its own after the caller's turn.
    assert f"Dialling +19005550199. {DEFAULT_TRANSFER_REFUSED}" in said, said
    assert said[-1] == "Goodbye!"
    ends = [e[1] for e in result.transcript if e[0] == "relay_app_end"]
    assert ends == ['{"reason": "hangup"}']
    assert_no_marker_heard(result)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
async def test_a_transfer_marker_split_anywhere_in_deltas_is_never_sent(size: int) -> None:
    text = "Sure. < Transfer to = 'sales' / > not this"
    sent: list[pb.TurnReply] = []

    async def send(part: pb.TurnReply) -> pb.DeliverAck:
        sent.append(part)
        return pb.DeliverAck(accepted=True)

    stream = ReplyStream(pb.TurnRequest(turn_id="CA1:1", call_sid="CA1", seq=1), send)
    for at in range(0, len(text), size):
        await stream.delta("s1", text[at : at + size])
        if stream.finished:
            break
    final, taken = await stream.finish(pb.TurnReply())
    assert taken and final.transfer_to == "sales" and not final.hangup
    assert "".join(p.text for p in sent) == "Sure. ", sent


# -- the dial-status webhook is a Twilio webhook like the others ---------------------------------
def _post(stack: Stack, path: str, params: dict[str, str], signed: bool = True) -> Response:
    url = f"{stack.public_url}{path}"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signed:
        headers[SIGNATURE_HEADER] = sign(url, params, stack.config.auth_token)
    body = urlencode(params).encode()
    return fetch(f"{stack.edge_url}{path}", method="POST", body=body, headers=headers)


def _params(stack: Stack, sid: str, **extra: str) -> dict[str, str]:
    return {"CallSid": sid, "AccountSid": stack.config.account_sid, "From": "+14155550100", **extra}


def _turns_of(stack: Stack, sid: str) -> list[pb.TurnRequest]:
    with redis.Redis.from_url(stack.redis_url) as rdb:
        entries = rdb.xrange(keys.TURN_STREAM)
    turns = [pb.TurnRequest.FromString(fields[keys.TURN_FIELD]) for _, fields in entries]
    return [t for t in turns if t.call_sid == sid]


def test_dial_status_refuses_unsigned_and_malformed_requests_writing_nothing(
    gather_stack: Stack,
) -> None:
    sid = "CA" + "d1" * 16
    busy = _params(gather_stack, sid, DialCallStatus="busy")
    path = "/twilio/dial-status?turn=2&to=sales"
    assert _post(gather_stack, path, busy, signed=False).status_code == 403
    assert _post(gather_stack, "/twilio/dial-status?to=sales", busy).status_code == 400
    assert _turns_of(gather_stack, sid) == []
    done = _post(gather_stack, path, _params(gather_stack, sid, DialCallStatus="completed"))
    assert done.status_code == 200 and ET.fromstring(done.text).find("Hangup") is not None
    assert _turns_of(gather_stack, sid) == []


def test_relay_action_never_dials_a_handoff_target_that_is_not_listed(relay_stack: Stack) -> None:
    sid = "CA" + "d2" * 16
    handoff = '{"reason": "transfer", "target": "+19005550199"}'
    params = _params(relay_stack, sid, SessionStatus="ended", HandoffData=handoff)
    resp = _post(relay_stack, "/twilio/relay-action", params)
    assert resp.status_code == 200
    root = ET.fromstring(resp.text)
    assert root.find(".//Dial") is None and root.find("Connect/ConversationRelay") is not None
    listed = _params(
        relay_stack,
        sid,
        SessionStatus="ended",
        HandoffData=handoff.replace("+19005550199", "Support"),
    )
    dial = ET.fromstring(_post(relay_stack, "/twilio/relay-action", listed).text).find("Dial")
    assert dial is not None and dial.findtext("Sip") == SUPPORT
