"""Language switch, through real processes: botsim's language scenario sends
`<language code="xx-YY"/>`, the edge (gunicorn, two processes) switches the call only to a
language VOICES gives a voice, callsim plays Twilio, in gather and relay mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from callsim.call import CallResult
from callsim.script import ScriptFn
from callsim.signing import SIGNATURE_HEADER, sign
from devstack.stack import Stack, StackConfig
from edge.settings import parse_voices
from shared import keys
from shared.callstore import merge_replies
from shared.config import ConfigError
from shared.pb import voicebridge_pb2 as pb
from tests.helpers import call, start_stack, wait_for
from worker.reply_stream import ReplyStream, unresolved_marker_at
from worker.speech import Speech

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "botsim" / "scenarios" / "language.json"
VOICES = "es-US=Polly.Lupe, de-DE=Polly.Vicki"  # no fr-FR: the bot's French is refused
GREETING = "Hello! Which tongue do you speak?"
DEFAULT_VOICE = "Google.en-US-Standard-C"


def _config(mode: str) -> StackConfig:
    return StackConfig(
        workers=1,
        botsim_args=("--scenario", str(SCENARIO)),
        edge_env={"VOICE_MODE": mode, "VOICES": VOICES, "TIMEOUT": "2", "EDGE_WORKERS": "2"},
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


def says(result: CallResult) -> list[tuple[str, str | None, str | None]]:
    """Every <Say> of every answer: (text, voice, language)."""
    out = []
    for hook in result.webhooks:
        if hook.body.startswith("<?xml"):
            for say in ET.fromstring(hook.body).iter("Say"):
                out.append((say.text or "", say.get("voice"), say.get("language")))
    return out


def gather_languages(result: CallResult) -> list[str | None]:
    return [
        g.get("language")
        for hook in result.webhooks
        if hook.body.startswith("<?xml")
        for g in ET.fromstring(hook.body).iter("Gather")
    ]


def spoken(result: CallResult) -> str:
    tokens = [e[1] for e in result.transcript if e[0] == "bot_token"]
    return " ".join([*result.bot_said(), *tokens])


def assert_no_marker_heard(result: CallResult) -> None:
    heard = spoken(result).lower()
    assert "<" not in heard and "language" not in heard and "code" not in heard, heard


def relay_caller(first: str) -> ScriptFn:
    """Says `first` to the greeting, something to the next reply, then bye."""

    def reply(heard: Sequence[str]) -> str | None:
        said = " ".join(heard)
        if GREETING in said:
            return first
        if "You said" in said:
            return "bye"
        return "something else"

    return reply


# -- the marker, and VOICES ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "said", "language"),
    [
        ('Ok. <language code="es-US"/> Hola.', ["Ok. Hola."], "es-US"),
        ("< LANGUAGE  Code = 'fr-fr' / >Bonjour", ["Bonjour"], "fr-FR"),
        ('<language code="spanish"/>Still here', ["Still here"], ""),
        ('<language code="es-US" onload="x"/>Hi', ['<language code="es-US" onload="x"/>Hi'], ""),
        ('<language code="de-DE"/>a <language code="es-US"/>b', ["a b"], "es-US"),
    ],
)
def test_language_marker_is_taken_out_and_only_a_code_counts(
    text: str, said: list[str], language: str
) -> None:
    speech = Speech()
    speech.add(text)
    assert speech.sentences == said
    assert speech.language == language
    assert not speech.ended  # speech goes on after a language marker


@pytest.mark.parametrize(
    "fragment", ["<lang", "< language ", '<Language code = "es', "<language code='es-US' /"]
)
def test_a_possible_language_marker_start_is_held_back(fragment: str) -> None:
    assert unresolved_marker_at(f"Hola {fragment}") == len("Hola ")


def test_voices_parse_and_normalise() -> None:
    assert parse_voices(VOICES) == {"es-US": "Polly.Lupe", "de-DE": "Polly.Vicki"}
    assert parse_voices("ES-us=Google.es-US-Standard-A") == {"es-US": "Google.es-US-Standard-A"}
    assert parse_voices("") == {}


@pytest.mark.parametrize(
    "bad",
    [
        "es-US",
        "spanish=Polly.Lupe",
        "es-US=",
        "es-US=Polly Lupe",
        "es-US=Google.fr-FR-Standard-A",
        "es-US=Polly.Lupe,es-us=Polly.Mia",
    ],
)
def test_a_bad_voices_entry_is_a_config_error_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="VOICES: bad entry"):
        parse_voices(bad)


def test_a_bad_voices_entry_stops_the_edge_with_one_line() -> None:
    env = {
        **os.environ,
        "PUBLIC_URL": "https://voice.example.com",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "token",
        "VOICES": "es-US=Polly.Lupe,klingon=Polly.Worf",
    }
    done = subprocess.run(
        [sys.executable, "-m", "edge"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "VOICES" in lines[0] and "klingon=Polly.Worf" in lines[0]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
async def test_a_language_marker_split_anywhere_in_deltas_switches_before_the_rest(
    size: int,
) -> None:
    text = "Vale. < Language code = 'es-US' / > ¿Algo más?"
    sent: list[pb.TurnReply] = []

    async def send(part: pb.TurnReply) -> pb.DeliverAck:
        sent.append(part)
        return pb.DeliverAck(accepted=True)

    stream = ReplyStream(pb.TurnRequest(turn_id="CA1:1", call_sid="CA1", seq=1), send)
    for at in range(0, len(text), size):
        await stream.delta("s1", text[at : at + size])
    final, taken = await stream.finish(pb.TurnReply())
    assert taken and not final.hangup
    assert "".join(p.text for p in sent) == "Vale.  ¿Algo más?", sent
    switched = [i for i, p in enumerate(sent) if p.language]
    assert len(switched) == 1 and sent[switched[0]].language == "es-US"
    # The switch rides on the first part after the marker: everything before it is English.
    assert "".join(p.text for p in sent[: switched[0]]).strip() == "Vale."


def test_late_replies_merged_keep_the_last_language() -> None:
    late = [pb.TurnReply(say=["Hola."], language="es-US"), pb.TurnReply(say=["Más."])]
    assert merge_replies(late, pb.TurnReply(say=["Ahora."])).language == "es-US"
    assert merge_replies(late, pb.TurnReply(language="de-DE")).language == "de-DE"
    assert merge_replies([], None).language == ""


# -- gather mode ---------------------------------------------------------------------------------
async def test_gather_later_say_and_gather_carry_the_new_language_and_voice(
    gather_stack: Stack,
) -> None:
    result = await call(gather_stack, ["spanish", "hola", "bye"])
    assert result.outcome == "hangup_by_app", result.transcript
    said = says(result)
    assert said[0] == (GREETING, DEFAULT_VOICE, "en-US")
    assert [s[0] for s in said[1:]] == [
        "Of course. ¿En qué puedo ayudarle?",
        "You said hola. Anything else?",
        "Goodbye!",
    ]
    # From the reply that switched it on, every turn (on either edge process) speaks Spanish.
    assert all(s[1:] == ("Polly.Lupe", "es-US") for s in said[1:]), said
    assert gather_languages(result) == ["en-US", "es-US", "es-US"]
    assert_no_marker_heard(result)


async def test_gather_an_unconfigured_language_is_refused_and_the_call_keeps_its_own(
    gather_stack: Stack,
) -> None:
    result = await call(gather_stack, ["french", "bonjour", "bye"])
    said = says(result)
    assert said[1][0] == "Bonjour! Que puis-je faire pour vous?"
    assert all(s[1:] == (DEFAULT_VOICE, "en-US") for s in said), said
    assert set(gather_languages(result)) == {"en-US"}
    assert_no_marker_heard(result)
    wait_for(lambda: "language refused" in gather_stack.logs() and "fr-FR" in gather_stack.logs())


async def test_gather_the_bot_can_switch_back_to_language(gather_stack: Stack) -> None:
    result = await call(gather_stack, ["spanish", "english", "bye"])
    said = says(result)
    assert said[2] == ("Back to English. What now?", DEFAULT_VOICE, "en-US"), said
    assert said[3] == ("Goodbye!", DEFAULT_VOICE, "en-US"), said
    assert gather_languages(result) == ["en-US", "es-US", "en-US"]


async def test_gather_a_malformed_code_is_ignored(gather_stack: Stack) -> None:
    result = await call(gather_stack, ["klingon", "qapla", "bye"])
    said = says(result)
    assert said[1][0] == "Still in English. What now?"
    assert all(s[1:] == (DEFAULT_VOICE, "en-US") for s in said), said
    assert set(gather_languages(result)) == {"en-US"}
    assert_no_marker_heard(result)
    # The worker dropped it: the edge never even saw a code to refuse.
    assert "voice=x" not in gather_stack.logs()


# -- relay mode ----------------------------------------------------------------------------------
def _events(result: CallResult) -> list[tuple[str, str]]:
    return [(e[0], e[1]) for e in result.transcript if e[0] in ("language", "bot_token")]


async def test_relay_the_language_frame_comes_before_the_next_text_and_twiml_declares_it(
    relay_stack: Stack,
) -> None:
    result = await call(relay_stack, relay_caller("spanish"))
    assert result.relay is not None, result.transcript
    relay = ET.fromstring(result.webhooks[0].body).find("Connect/ConversationRelay")
    assert relay is not None
    declared = {el.get("code"): el.get("voice") for el in relay.iter("Language")}
    assert declared == {"es-US": "Polly.Lupe", "de-DE": "Polly.Vicki"}
    events = _events(result)
    switch = events.index(("language", "es-US/es-US"))
    before = "".join(t for kind, t in events[:switch] if kind == "bot_token")
    after = "".join(t for kind, t in events[switch:] if kind == "bot_token")
    assert GREETING in before and "¿En qué puedo ayudarle?" not in before
    assert after.lstrip().startswith("Of course. ¿En qué puedo ayudarle?"), events
    assert "You said" in after and "Goodbye!" in after
    assert [e for e in events if e[0] == "language"] == [("language", "es-US/es-US")]
    assert_no_marker_heard(result)


async def test_relay_an_unconfigured_language_sends_no_frame(relay_stack: Stack) -> None:
    result = await call(relay_stack, relay_caller("french"))
    events = _events(result)
    assert "Bonjour! Que puis-je faire pour vous?" in "".join(t for _, t in events), events
    assert [e for e in events if e[0] == "language"] == []
    assert "You said" in spoken(result)
    assert_no_marker_heard(result)


async def test_relay_a_marker_split_across_deltas_is_never_spoken(relay_stack: Stack) -> None:
    result = await call(relay_stack, relay_caller("streamed"))
    events = _events(result)
    switch = events.index(("language", "es-US/es-US"))
    before = "".join(t for kind, t in events[:switch] if kind == "bot_token")
    after = "".join(t for kind, t in events[switch:] if kind == "bot_token")
    # botsim streams word by word: the marker came in pieces, none of which was sent.
    assert before.rstrip().endswith("Vale."), events
    assert after.lstrip().startswith("¿Algo más?"), events
    assert_no_marker_heard(result)


class _Socket:
    """A ConversationRelay socket as Twilio holds it, for a session that takes a call over."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def frame(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def until_cycle_ends(self) -> list[dict[str, Any]]:
        frames = [await self.frame()]
        while not (frames[-1]["type"] == "text" and frames[-1]["last"]):
            frames.append(await self.frame())
        return frames


async def _session(stack: Stack, sid: str) -> tuple[aiohttp.ClientSession, _Socket]:
    url = stack.public_url.replace("http://", "ws://", 1) + "/twilio/relay"
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(
        url, headers={SIGNATURE_HEADER: sign(url, {}, stack.config.auth_token)}
    )
    socket = _Socket(ws)
    await socket.send(
        {
            "type": "setup",
            "sessionId": "VX" + sid[2:],
            "accountSid": stack.config.account_sid,
            "callSid": sid,
            "from": "+14155550100",
            "to": "+14155550199",
            "customParameters": {"callSid": sid},
        }
    )
    return session, socket


def _prompt(text: str) -> dict[str, Any]:
    return {"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True}


async def test_relay_a_session_that_takes_the_call_over_keeps_its_language(
    relay_stack: Stack,
) -> None:
    """The socket is lost (its edge process died): the new session, on whichever process,
    switches to the call's stored language before anything is said."""
    sid = "CA" + "1a" * 16
    session, socket = await _session(relay_stack, sid)
    async with session:
        assert "".join(f["token"] for f in await socket.until_cycle_ends()) == GREETING
        await socket.send(_prompt("spanish"))
        frames = await socket.until_cycle_ends()
        assert frames[0] == {
            "type": "language",
            "ttsLanguage": "es-US",
            "transcriptionLanguage": "es-US",
        }, frames
        await socket.ws.close()
    with redis.Redis.from_url(relay_stack.redis_url) as rdb:
        assert rdb.hget(keys.call_state(sid), keys.F_LANGUAGE) == b"es-US"
    session, socket = await _session(relay_stack, sid)
    async with session:
        first = await socket.frame()
        assert first["type"] == "language" and first["ttsLanguage"] == "es-US", first
        await socket.send(_prompt("hola"))
        said = "".join(f.get("token", "") for f in await socket.until_cycle_ends())
        assert said == "You said hola. Anything else?"
        await socket.ws.close()
