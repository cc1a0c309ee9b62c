"""The keypad: keys pressed at a Gather or on a relay socket become DTMF turns, and a choice's
options are read with the key that picks each, through real processes (edge under gunicorn,
redis-server, workers, botsim, callsim as Twilio)."""

from __future__ import annotations

import hashlib
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis

from callsim.call import gathered_digits
from callsim.script import Dtmf
from callsim.signing import sign
from callsim.twiml import Gather, TwimlError, parse
from devstack.stack import Stack, StackConfig
from edge.guard import MAX_DIGITS
from edge.settings import DEFAULT_REPROMPT, EdgeSettings
from edge.twiml import Twiml
from shared import keys
from shared.config import ConfigError
from shared.pb import voicebridge_pb2 as pb
from tests.helpers import Response, call, fetch, start_stack, wait_for
from tests.test_relay_edge import relay, turn_written, turns_of
from worker.speech import render_messages

ROOT = Path(__file__).resolve().parents[1]
QUESTION_BOT = ("--scenario", str(ROOT / "botsim" / "scenarios" / "question.json"))
GREETING = "Hello! I am the echo bot. Say something and I will repeat it. Say bye to hang up."
TEA_OR_COFFEE = "Welcome. Would you like tea or coffee?"
PRESS_TEA_OR_COFFEE = "Press 1 for Tea, or 2 for Coffee."
SAY_TEA_OR_COFFEE = "You can say Tea, or Coffee."
RELAY_PAUSE_MS = 400
DEFAULT_PAUSE_MS = 1500  # DTMF_PAUSE_MS unset


# -- settings, TwiML, speech and callsim, without processes ---------------------------------------
BASE_ENV = {
    "PUBLIC_URL": "https://voice.example.com",
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "token",
}


def _settings(**env: str) -> EdgeSettings:
    return EdgeSettings.from_env({**BASE_ENV, **env})


def _gather_of(settings: EdgeSettings) -> Gather:
    doc = parse(Twiml(settings).speak_and_gather(["Hi."], 1))
    gather = doc.verbs[0]
    assert isinstance(gather, Gather)
    return gather


def test_keypad_settings_and_their_gather() -> None:
    default = _settings()
    assert (default.gather_input, default.finish_on_key, default.dtmf_pause_s) == (
        "dtmf speech",
        "#",
        DEFAULT_PAUSE_MS / 1000,
    )
    assert default.keypad
    gather = _gather_of(default)
    assert (gather.input, gather.finish_on_key) == (("dtmf", "speech"), "#")
    # Set to nothing: no finish key (Twilio's default would be "#", so it is written).
    none = _settings(FINISH_ON_KEY="")
    assert none.finish_on_key == ""
    assert 'finishOnKey=""' in Twiml(none).speak_and_gather(["Hi."], 1)
    assert _gather_of(_settings(FINISH_ON_KEY="*")).finish_on_key == "*"
    speech = _settings(GATHER_INPUT="speech")
    assert not speech.keypad
    assert "finishOnKey" not in Twiml(speech).speak_and_gather(["Hi."], 1)
    assert _gather_of(speech).input == ("speech",)
    assert _settings(GATHER_INPUT="DTMF").gather_input == "dtmf"
    assert _settings(GATHER_INPUT="speech dtmf").gather_input == "dtmf speech"
    # Relay mode always detects keys (dtmfDetection), whatever the Gather would take.
    assert _settings(VOICE_MODE="relay", GATHER_INPUT="speech").keypad
    assert _settings(DTMF_PAUSE_MS="400").dtmf_pause_s == 0.4


@pytest.mark.parametrize(
    "env",
    [
        {"FINISH_ON_KEY": "##"},
        {"FINISH_ON_KEY": "x"},
        {"FINISH_ON_KEY": "١"},
        {"GATHER_INPUT": "voice"},
        {"GATHER_INPUT": "dtmf,speech"},
        {"DTMF_PAUSE_MS": "10"},
        {"DTMF_PAUSE_MS": "soon"},
    ],
)
def test_bad_keypad_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        _settings(**env)


def _choice(*labels: str) -> dict[str, Any]:
    options = [{"label": label, "value": label.lower()} for label in labels]
    return {"payload": {"type": "choice", "text": "Which one?", "options": options}}


def test_options_are_read_with_their_keys_over_the_whole_turn() -> None:
    card = {
        "type": "card",
        "title": "Pizza",
        "actions": [{"action": "postback", "label": "Order", "value": "order"}],
    }
    speech = render_messages([_choice("Red", "Green"), {"payload": card}], keypad=True)
    assert speech.sentences == [
        "Which one? Press 1 for Red, or 2 for Green.",
        "Pizza. Press 3 for Order.",  # numbered after the first choice's, as the keys pick them
    ]
    assert speech.options == [("Red", "red"), ("Green", "green"), ("Order", "order")]
    # No keypad (GATHER_INPUT=speech): as before.
    assert render_messages([_choice("Red", "Green")]).sentences == [
        "Which one? You can say Red, or Green."
    ]


def test_options_past_the_ninth_key_are_read_without_one() -> None:
    labels = [f"Item {n}" for n in range(1, 12)]
    (said,) = render_messages([_choice(*labels)], keypad=True).sentences
    assert said.startswith("Which one? Press 1 for Item 1, 2 for Item 2,")
    assert said.endswith("or 9 for Item 9. Or say Item 10, or Item 11.")


def test_callsim_posts_digits_as_twilio_does() -> None:
    hash_key = Gather(input=("dtmf", "speech"))
    assert gathered_digits("12#", hash_key) == "12"  # the finish key is not part of Digits
    assert gathered_digits("1#2", hash_key) == "1"  # Twilio posts at the finish key
    assert gathered_digits("#", hash_key) == ""  # no input
    assert gathered_digits("12#", Gather(finish_on_key="")) == "12#"
    assert gathered_digits("12*3", Gather(finish_on_key="*")) == "12"
    assert gathered_digits("1234", Gather(num_digits=2)) == "12"
    with pytest.raises(TwimlError):
        parse('<Response><Gather input="dtmf" finishOnKey="ab"/></Response>')


# -- gather mode through the stack ----------------------------------------------------------------
def _form(stack: Stack, sid: str, **fields: str) -> dict[str, str]:
    return {
        "CallSid": sid,
        "AccountSid": stack.config.account_sid,
        "From": "+14155550100",
        "To": "+14155550199",
        "CallStatus": "in-progress",
        "Direction": "inbound",
        **fields,
    }


def _post_gather(stack: Stack, form: dict[str, str], turn: int = 1) -> Response:
    path = f"/twilio/gather?turn={turn}&silent=0"
    return fetch(
        f"{stack.edge_url}{path}",
        method="POST",
        body=urlencode(form).encode(),
        headers={
            "X-Twilio-Signature": sign(f"{stack.public_url}{path}", form, stack.config.auth_token),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


def _said_in(twiml: str) -> str:
    return " ".join(el.text or "" for el in ET.fromstring(twiml).iter("Say"))


def _bot_turn_ids(stack: Stack, sid: str) -> dict[str, int]:
    """How many user messages the bot got per voicebridge turnId (botsim's own record)."""
    seen = fetch(f"{stack.chat_url}/_botsim/turns").json()["conversations"]
    return dict(seen.get(sid, {}).get("turnIds", {}))


async def test_every_gather_takes_keys_ended_by_the_hash_key(stack: Stack) -> None:
    result = await call(stack, ["hello"])
    for webhook in result.webhooks[:2]:
        gather = ET.fromstring(webhook.body).find("Gather")
        assert gather is not None, webhook.body
        assert (gather.get("input"), gather.get("finishOnKey")) == ("dtmf speech", "#")


async def test_keys_at_a_gather_reach_the_bot_as_one_dtmf_turn(
    stack: Stack, rdb: redis.Redis
) -> None:
    sid = "CA" + "d1" * 16
    result = await call(stack, [Dtmf("12#"), "bye"], call_sid=sid)
    assert result.bot_said() == [GREETING, "You said: 12", "Goodbye!"], result.transcript
    keyed = result.webhooks[1]
    assert keyed.params["Digits"] == "12" and "SpeechResult" not in keyed.params
    turns = [pb.TurnRequest.FromString(f[keys.TURN_FIELD]) for _, f in rdb.xrange(keys.TURN_STREAM)]
    (turn,) = [t for t in turns if t.call_sid == sid and t.seq == 1]
    assert (turn.kind, turn.digits, turn.text, turn.keypad) == (pb.TurnRequest.DTMF, "12", "", True)
    assert _bot_turn_ids(stack, sid).get(f"{sid}:1") == 1  # the bot saw the keys once


@pytest.mark.parametrize("digits", ["12a", "1" * (MAX_DIGITS + 1), "１", "1 2", "<Dial>"])
def test_digits_that_are_not_keys_are_refused(stack: Stack, rdb: redis.Redis, digits: str) -> None:
    sid = "CA" + hashlib.md5(digits.encode()).hexdigest()
    before = rdb.xlen(keys.TURN_STREAM) if rdb.exists(keys.TURN_STREAM) else 0
    resp = _post_gather(stack, _form(stack, sid, Digits=digits))
    assert resp.status_code == 400, resp.text
    assert (rdb.xlen(keys.TURN_STREAM) if rdb.exists(keys.TURN_STREAM) else 0) == before
    assert rdb.exists(keys.turn_mark(sid, 1)) == 0
    # The longest a turn takes is accepted.
    longest = _form(stack, "CA" + "d2" * 16, Digits="1" * MAX_DIGITS)
    assert _post_gather(stack, longest).status_code == 200


@pytest.fixture(scope="module")
def speech_only_stack() -> Iterator[Stack]:
    """GATHER_INPUT=speech, with a bot whose every reply is a choice."""
    s = start_stack(
        StackConfig(
            workers=1,
            botsim_args=QUESTION_BOT,
            edge_env={"GATHER_INPUT": "speech", "REPLY_DEADLINE_MS": "5000"},
            worker_env={"BOT_QUIET_MS": "100"},
        )
    )
    yield s
    s.stop()


async def test_speech_only_gather_reads_no_keys_and_ignores_digits(
    speech_only_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack, rdb = speech_only_stack, redis_for(speech_only_stack)
    result = await call(stack, ["tea"])
    gather = ET.fromstring(result.webhooks[0].body).find("Gather")
    assert gather is not None and gather.get("input") == "speech"
    assert gather.get("finishOnKey") is None
    assert result.bot_said()[:2] == [
        f"{TEA_OR_COFFEE} {SAY_TEA_OR_COFFEE}",
        f"You said tea. Tea or coffee? {SAY_TEA_OR_COFFEE}",
    ]
    # Keys posted anyway: no input, so the usual silence answer, and no turn for the bot.
    sid = "CA" + "d3" * 16
    resp = _post_gather(stack, _form(stack, sid, Digits="2"))
    assert resp.status_code == 200, resp.text
    assert _said_in(resp.text) == DEFAULT_REPROMPT
    reprompt = ET.fromstring(resp.text).find("Gather")
    assert reprompt is not None and "silent=1" in reprompt.get("action", "")
    assert turns_of(rdb, sid) == [] and rdb.exists(keys.turn_mark(sid, 1)) == 0


@pytest.fixture(scope="module")
def choice_stack() -> Iterator[Stack]:
    """Gather mode with keys ended by '*', and a bot whose every reply is a choice."""
    s = start_stack(
        StackConfig(
            workers=1,
            botsim_args=QUESTION_BOT,
            edge_env={"FINISH_ON_KEY": "*", "REPLY_DEADLINE_MS": "5000"},
            worker_env={"BOT_QUIET_MS": "100"},
        )
    )
    yield s
    s.stop()


async def test_a_numbered_choice_is_picked_by_its_key_or_its_label(choice_stack: Stack) -> None:
    result = await call(choice_stack, [Dtmf("2*"), "Tea", Dtmf("#*"), "bye"])
    said = result.bot_said()
    assert said[0] == f"{TEA_OR_COFFEE} {PRESS_TEA_OR_COFFEE}", result.transcript
    gather = ET.fromstring(result.webhooks[0].body).find("Gather")
    assert gather is not None and gather.get("finishOnKey") == "*"
    assert gather.get("hints") == "Tea,Coffee"  # saying a label still works
    assert result.webhooks[1].params["Digits"] == "2"
    # Key 2 is the second option read: the bot gets its value, as for the spoken label.
    assert said[1] == f"You said coffee. Tea or coffee? {PRESS_TEA_OR_COFFEE}"
    assert said[2] == f"You said tea. Tea or coffee? {PRESS_TEA_OR_COFFEE}"
    # A key that picks nothing ('#' is a key when '*' ends them) reaches the bot as it is.
    assert said[3] == f"You said #. Tea or coffee? {PRESS_TEA_OR_COFFEE}"
    assert said[4] == "Bye!"


# -- relay mode ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relay_bare_stack() -> Iterator[Stack]:
    """Relay mode, no worker (the test reads the turns), keys ended by '*' or a 400 ms pause."""
    s = start_stack(
        StackConfig(
            workers=0,
            edge_env={
                "VOICE_MODE": "relay",
                "DTMF_PAUSE_MS": str(RELAY_PAUSE_MS),
                "FINISH_ON_KEY": "*",
                "TIMEOUT": "30",
            },
        )
    )
    yield s
    s.stop()


async def test_relay_keys_end_at_the_finish_key_or_the_pause(
    relay_bare_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack, rdb = relay_bare_stack, redis_for(relay_bare_stack)
    sid = "CA" + "d4" * 16
    async with relay(stack) as twilio:
        await twilio.setup(stack, sid)
        await turn_written(rdb, sid, 0)
        # The finish key ends the keys at once, and is not one of them; '#' is a key here.
        sent_at = time.time()
        for digit in "#3*":
            await twilio.send({"type": "dtmf", "digit": digit})
        finished = await turn_written(rdb, sid, 1)
        assert (finished.kind, finished.digits, finished.keypad) == (
            pb.TurnRequest.DTMF,
            "#3",
            True,
        )
        assert finished.created_unix_ms / 1000 - sent_at < RELAY_PAUSE_MS / 1000
        # No finish key: DTMF_PAUSE_MS after the last key, not the default pause.
        await twilio.send({"type": "dtmf", "digit": "4"})
        last_key_at = time.time()  # before the last key reaches the edge: its pause is later
        await twilio.send({"type": "dtmf", "digit": "2"})
        paused = await turn_written(rdb, sid, 2)
        assert (paused.kind, paused.digits) == (pb.TurnRequest.DTMF, "42")
        waited_s = paused.created_unix_ms / 1000 - last_key_at
        assert RELAY_PAUSE_MS / 1000 <= waited_s + 0.002 < DEFAULT_PAUSE_MS / 1000, waited_s
    assert [t.seq for t in turns_of(rdb, sid)] == [0, 1, 2]


@pytest.fixture(scope="module")
def relay_choice_stack() -> Iterator[Stack]:
    s = start_stack(
        StackConfig(
            workers=1,
            botsim_args=QUESTION_BOT,
            edge_env={"VOICE_MODE": "relay", "DTMF_PAUSE_MS": str(RELAY_PAUSE_MS)},
            worker_env={"BOT_QUIET_MS": "100"},
        )
    )
    yield s
    s.stop()


async def test_relay_reads_the_keys_and_a_key_picks_the_option(
    relay_choice_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack, rdb = relay_choice_stack, redis_for(relay_choice_stack)
    sid = "CA" + "d5" * 16
    result = await call(stack, ["dtmf:1", "bye"], call_sid=sid)
    said = result.bot_said()
    assert said[0] == f"{TEA_OR_COFFEE} {PRESS_TEA_OR_COFFEE}", result.transcript
    assert said[1] == f"You said tea. Tea or coffee? {PRESS_TEA_OR_COFFEE}", result.transcript
    keyed = [t for t in turns_of(rdb, sid) if t.kind == pb.TurnRequest.DTMF]
    assert [(t.digits, t.keypad) for t in keyed] == [("1", True)]
    wait_for(lambda: rdb.hget(keys.call_state(sid), keys.F_ENDED) == b"1")  # ended as usual
