"""callsim against a tiny real HTTP server that answers scripted TwiML and checks signatures
with twilio-python's own RequestValidator."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

# Submodules, not the package: the venv's editable install may predate callsim/__init__.py.
from callsim.call import CallResult, place_call
from callsim.cli import main as cli_main
from callsim.load import MAX_TURNS, LoadConfig, run_load
from callsim.script import HANG_UP, Reply, Script
from callsim.signing import sign, signing_string
from callsim.twiml import TwimlError, parse
from tests.helpers import Seen, serve_twiml_app, twiml
from tests.helpers import TwimlApp as App

ACCOUNT_SID = "AC" + "0" * 32
TOKEN = "test-token"
PUBLIC = "https://voice.example.com"

# --- signing -------------------------------------------------------------------------------

VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://mycompany.com/myapp.php?foo=1&bar=2", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("https://mycompany.com:443/myapp.php?foo=1&bar=2", "kvajT1Ptam85bY51eRf/AJRuM3w="),
        ("http://mycompany.com:80/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
        ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
    ],
)
def test_sign_matches_twilio_vectors(url: str, expected: str) -> None:
    assert sign(url, VECTOR_PARAMS, "12345") == expected
    assert RequestValidator("12345").validate(url, VECTOR_PARAMS, expected)


class _MultiDict(dict[str, list[str]]):
    def getall(self, name: str) -> list[str]:
        return self[name]


def test_sign_repeated_params_sorted_like_validator() -> None:
    params = [("b", "2"), ("a", "z"), ("a", "y")]
    assert signing_string("https://x.test/p", params) == "https://x.test/pay" + "az" + "b2"
    signature = sign("https://x.test/p", params, "tok")
    multi = _MultiDict(a=["z", "y"], b=["2"])
    assert RequestValidator("tok").validate("https://x.test/p", multi, signature)
    assert not RequestValidator("other").validate("https://x.test/p", multi, signature)


# --- TwiML parsing -------------------------------------------------------------------------


def test_parse_escaped_text_is_not_a_verb() -> None:
    doc = parse("<Response><Say>Press &lt;Dial&gt; now &amp; wait</Say></Response>")
    assert [v.text for v in doc.verbs] == ["Press <Dial> now & wait"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        "<Response><Say>unclosed</Response>",
        "<Response><Dial><Conference>room</Conference></Dial></Response>",
        "<Response><Dial>555-0100</Dial></Response>",
        "<Response><Dial><Sip>help@example.com</Sip></Dial></Response>",
        "<Resp><Say>hi</Say></Resp>",
        "<Response><say>lowercase verbs are not TwiML</say></Response>",
        "<Response><Gather><Redirect>/x</Redirect></Gather></Response>",
        '<Response><Say voice="Google.en-US-Standard-C" language="fr-FR">x</Say></Response>',
        "",
    ],
)
def test_parse_rejects_what_twilio_rejects(body: str) -> None:
    with pytest.raises(TwimlError):
        parse(body)


def test_parse_gather_defaults_and_attributes() -> None:
    doc = parse(
        '<Response><Gather input="speech" action="/next?turn=2" timeout="3" speechTimeout="auto"'
        ' language="en-GB" hints="yes, no" actionOnEmptyResult="true">'
        '<Say voice="Google.en-GB-Standard-A" language="en-GB">Hi</Say></Gather>'
        "<Gather/></Response>"
    )
    first, second = doc.verbs
    assert first.input == ("speech",) and first.hints == ("yes", "no")  # type: ignore[union-attr]
    assert first.action_on_empty_result and first.timeout_s == 3  # type: ignore[union-attr]
    assert second.input == ("dtmf",) and second.method == "POST"  # type: ignore[union-attr]
    assert second.action is None and not second.action_on_empty_result  # type: ignore[union-attr]


# --- a tiny Twilio-facing app (tests.helpers.TwimlApp) ---------------------------------------


@pytest.fixture
def app() -> Iterator[App]:
    with serve_twiml_app(App(token=TOKEN, public_url=PUBLIC)) as served:
        yield served


async def call(app: App, caller: Any, **kwargs: Any) -> CallResult:
    async with aiohttp.ClientSession() as client:
        return await place_call(
            client,
            app.url + "/twilio/voice",
            account_sid=ACCOUNT_SID,
            auth_token=TOKEN,
            caller=caller,
            signing_base=PUBLIC,
            **kwargs,
        )


# --- following TwiML -----------------------------------------------------------------------


async def test_gather_posts_speech_to_relative_action(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml(
        '<Gather input="speech" action="gather?turn=1" actionOnEmptyResult="true">'
        "<Say>Hi, how can I help?</Say></Gather>"
    )
    app.routes["/twilio/gather"] = lambda s: twiml(
        f"<Say>You said {s.params['SpeechResult']}</Say>"
    )
    result = await call(app, ["book a table"])
    assert result.outcome == "hangup_by_app"
    assert result.transcript == [
        ("bot_say", "Hi, how can I help?"),
        ("caller_say", "book a table"),
        ("bot_say", "You said book a table"),
        ("hangup",),
    ]
    first, second = app.seen
    assert all(s.signature_ok for s in app.seen)
    assert first.path == "/twilio/voice" and first.params["CallStatus"] == "ringing"
    assert second.path == "/twilio/gather?turn=1"
    assert second.params["SpeechResult"] == "book a table"
    assert float(second.params["Confidence"]) > 0.5
    assert second.params["CallStatus"] == "in-progress"
    for key, value in {
        "AccountSid": ACCOUNT_SID,
        "Direction": "inbound",
        "From": "+14155550100",
        "Caller": "+14155550100",
        "To": "+14155550199",
        "Called": "+14155550199",
        "ApiVersion": "2010-04-01",
    }.items():
        assert first.params[key] == value == second.params[key]
    sid = first.params["CallSid"]
    assert sid == second.params["CallSid"] and len(sid) == 34 and sid.startswith("CA")
    records = result.webhooks
    assert [r.url for r in records] == [PUBLIC + "/twilio/voice", PUBLIC + "/twilio/gather?turn=1"]
    assert all(r.status == 200 and r.latency_ms > 0 and "<Response>" in r.body for r in records)


@pytest.mark.parametrize(
    ("failing", "code"), [((500, "boom"), "11200"), ((200, "<Response><Say>"), "12100")]
)
async def test_a_failed_webhook_goes_to_the_fallback_url_once(
    app: App, failing: tuple[int, str], code: str
) -> None:
    """Twilio requests the FallbackUrl when it cannot retrieve (11200) or parse (12100) the
    TwiML, with ErrorCode and ErrorUrl; a failing fallback ends the call (no loop)."""
    app.routes["/twilio/voice"] = lambda s: failing
    app.routes["/twilio/fallback"] = lambda s: twiml("<Say>Back again.</Say>")
    result = await call(app, [], fallback=(app.url + "/twilio/fallback?outbound=7", "POST"))
    assert result.outcome == "hangup_by_app" and result.bot_said() == ["Back again."]
    voice, fallback = app.seen
    assert fallback.path == "/twilio/fallback?outbound=7" and fallback.signature_ok
    assert fallback.params["ErrorCode"] == code
    assert fallback.params["ErrorUrl"] == PUBLIC + "/twilio/voice"
    assert fallback.params["CallSid"] == voice.params["CallSid"]
    app.routes["/twilio/fallback"] = lambda s: (500, "also down")
    app.seen.clear()
    failed = await call(app, [], fallback=(app.url + "/twilio/fallback", "POST"))
    assert failed.outcome == "error" and len(app.seen) == 2


async def test_silence_with_action_on_empty_result_posts_without_speech(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml(
        '<Gather input="speech" action="/twilio/gather" actionOnEmptyResult="true">'
        "<Say>Hello?</Say></Gather>"
    )
    app.routes["/twilio/gather"] = lambda s: twiml(
        "<Say>Silent</Say>" if "SpeechResult" not in s.params else "<Say>Spoke</Say>", "<Hangup/>"
    )
    result = await call(app, [None])
    assert result.transcript == [
        ("bot_say", "Hello?"),
        ("silence",),
        ("bot_say", "Silent"),
        ("hangup",),
    ]
    assert [s.path for s in app.seen] == ["/twilio/voice", "/twilio/gather"]
    assert "SpeechResult" not in app.seen[1].params and app.seen[1].signature_ok


async def test_silence_without_action_on_empty_result_falls_through(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml(
        '<Gather input="speech" action="/twilio/gather"><Say>Hello?</Say></Gather>',
        "<Say>Still there?</Say>",
        '<Redirect method="GET">/twilio/again?n=1</Redirect>',
    )
    app.routes["/twilio/again"] = lambda s: twiml("<Say>Bye</Say>", "<Hangup/>")
    result = await call(app, [""])
    assert result.transcript == [
        ("bot_say", "Hello?"),
        ("silence",),
        ("bot_say", "Still there?"),
        ("redirect", PUBLIC + "/twilio/again?n=1"),
        ("bot_say", "Bye"),
        ("hangup",),
    ]
    again = app.seen[1]
    assert again.method == "GET" and again.signature_ok
    assert again.params["n"] == "1" and again.params["CallSid"] == app.seen[0].params["CallSid"]


async def test_gather_last_then_silence_ends_call(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml('<Gather input="speech"><Say>Hi</Say></Gather>')
    result = await call(app, [None])
    assert result.outcome == "hangup_by_app"
    assert result.transcript[-2:] == [("silence",), ("hangup",)]


async def test_gather_without_action_posts_to_same_document(app: App) -> None:
    turns = iter(["first", "second"])
    app.routes["/twilio/voice"] = lambda s: (
        twiml('<Gather input="speech"><Say>Go</Say></Gather>')
        if next(turns) == "first"
        else twiml("<Hangup/>")
    )
    await call(app, ["x"])
    assert [s.path for s in app.seen] == ["/twilio/voice", "/twilio/voice"]
    assert app.seen[1].params["SpeechResult"] == "x"


async def test_dtmf_only_gather_does_not_hear_speech(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml(
        '<Gather action="/twilio/g" actionOnEmptyResult="true"><Say>Press</Say></Gather>'
    )
    app.routes["/twilio/g"] = lambda s: twiml("<Hangup/>")
    await call(app, ["hello"])
    assert "SpeechResult" not in app.seen[1].params and "Digits" not in app.seen[1].params


async def test_escaped_say_is_text(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml(
        "<Say>Please &lt;Dial&gt;+15555550100&lt;/Dial&gt;</Say>", "<Hangup/>"
    )
    result = await call(app, [])
    assert result.outcome == "hangup_by_app"
    assert result.bot_said() == ["Please <Dial>+15555550100</Dial>"]


@pytest.mark.parametrize("body", ["<Response><Say>broken</Response>", twiml("<Record/>")])
async def test_invalid_twiml_ends_call(app: App, body: str) -> None:
    app.routes["/twilio/voice"] = lambda s: body
    result = await call(app, ["never heard"])
    assert result.outcome == "invalid_twiml"
    assert result.transcript[-1][0] == "error"
    assert result.webhooks[0].ended_call


@pytest.mark.parametrize(
    ("outcomes", "status", "duration"),
    [({}, "completed", "42"), ({"+15555550100": "busy"}, "busy", "0")],
)
async def test_dial_reaches_a_person_then_posts_the_action_signed(
    app: App, outcomes: dict[str, str], status: str, duration: str
) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml(
        "<Say>Connecting</Say>",
        '<Dial action="/twilio/dialled?to=sales"><Number>+15555550100</Number></Dial>',
        "<Say>never reached</Say>",
    )
    app.routes["/twilio/dialled"] = lambda s: twiml("<Say>Back</Say>", "<Hangup/>")
    result = await call(app, [], dial_outcomes=outcomes)
    assert result.outcome == "hangup_by_app"
    assert ("dial", "+15555550100", status) in result.transcript
    assert result.bot_said() == ["Connecting", "Back"]
    dialled = app.seen[1]
    assert dialled.path == "/twilio/dialled?to=sales" and dialled.signature_ok
    assert dialled.params["DialCallStatus"] == status
    assert dialled.params["DialCallDuration"] == duration
    assert dialled.params["DialCallSid"].startswith("CA")
    assert [w.kind for w in result.webhooks] == ["start", "dial_action"]


async def test_dial_without_action_goes_on_with_the_next_verb(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml(
        "<Dial><Sip>sip:help@example.com</Sip></Dial>", "<Say>After</Say>"
    )
    result = await call(app, [], dial_outcomes={"sip:help@example.com": "no-answer"})
    assert ("dial", "sip:help@example.com", "no-answer") in result.transcript
    assert result.bot_said() == ["After"] and len(app.seen) == 1


async def test_http_error_is_application_error(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: (500, "oops")
    result = await call(app, [])
    assert result.outcome == "error"
    assert "HTTP 500" in (result.error or "")


async def test_slow_webhook_is_application_error(app: App) -> None:
    def slow(s: Seen) -> str:
        app.release.wait(30)  # released when the test ends, not after a guessed delay
        return twiml("<Hangup/>")

    app.routes["/twilio/voice"] = slow
    result = await call(app, [], webhook_timeout_s=0.2)
    assert result.outcome == "error"
    assert "no response within" in (result.error or "")


async def test_caller_hangs_up_and_status_callback_is_signed(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml(
        '<Gather input="speech" action="/twilio/voice"><Say>Again</Say></Gather>'
    )
    app.routes["/twilio/status"] = lambda s: (204, "")
    result = await call(app, ["one", "two"], status_url="/twilio/status")
    assert result.outcome == "caller_hung_up"
    assert [s.path for s in app.seen] == ["/twilio/voice"] * 3 + ["/twilio/status"]
    status = app.seen[-1]
    assert status.signature_ok and status.params["CallStatus"] == "completed"
    assert int(status.params["CallDuration"]) >= 0
    assert result.webhooks[-1].kind == "status"


async def test_interactive_source_and_redirect_loop_guard(app: App) -> None:
    heard: list[tuple[str, ...]] = []

    async def person(words: Sequence[str]) -> Reply:
        heard.append(tuple(words))
        return "loop" if len(heard) == 1 else HANG_UP

    app.routes["/twilio/voice"] = lambda s: twiml(
        '<Gather input="speech" action="/twilio/loop"><Say>A</Say><Say>B</Say></Gather>'
    )
    app.routes["/twilio/loop"] = lambda s: twiml("<Redirect>/twilio/loop</Redirect>")
    result = await call(app, Script(person), max_webhooks=5)
    assert heard == [("A", "B")]
    assert result.outcome == "error" and len(app.seen) == 5


async def test_urls_go_out_exactly_as_signed(app: App) -> None:
    # Re-quoted on the way out (%41 -> A, a stray % -> %25), the URL the app sees would not be
    # the one signed; with a GET, Twilio's own parameters are appended and signed too.
    post_path, get_path = "/twilio/odd?a=%41&b=%2b&c=%&d=%zz", "/twilio/odd2?e=%7E%41"
    app.routes["/twilio/voice"] = lambda s: twiml(
        f"<Redirect>{post_path.replace('&', '&amp;')}</Redirect>"
    )
    app.routes["/twilio/odd"] = lambda s: twiml(f'<Redirect method="GET">{get_path}</Redirect>')
    app.routes["/twilio/odd2"] = lambda s: twiml("<Hangup/>")
    result = await call(app, [])
    assert result.outcome == "hangup_by_app", result.error
    assert [s.signature_ok for s in app.seen] == [True, True, True]
    assert app.seen[1].path == post_path
    assert app.seen[2].path.startswith(get_path + "&AccountSid=")


async def test_offsite_redirect_is_refused(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml("<Redirect>https://elsewhere.test/x</Redirect>")
    result = await call(app, [])
    assert result.outcome == "error" and len(app.seen) == 1
    assert "refusing" in (result.error or "")


def test_cli_call_prints_transcript(app: App) -> None:
    app.routes["/twilio/voice"] = lambda s: twiml(
        '<Gather input="speech" action="/twilio/g" actionOnEmptyResult="true">'
        "<Say>Welcome</Say></Gather>"
    )
    app.routes["/twilio/g"] = lambda s: twiml(
        '<Gather input="speech" action="/twilio/g" actionOnEmptyResult="true">'
        f"<Say>Heard {s.params.get('SpeechResult', 'nothing')}</Say></Gather>"
    )
    out = io.StringIO()
    code = cli_main(
        [
            "call",
            "--url",
            app.url + "/twilio/voice",
            "--account-sid",
            ACCOUNT_SID,
            "--auth-token",
            TOKEN,
            "--public-url",
            PUBLIC,
            "--say",
            "hello",
            "--say",
            "",
        ],
        out=out,
    )
    lines = out.getvalue().splitlines()
    assert code == 0 and all(s.signature_ok for s in app.seen)
    assert lines[:5] == [
        "Bot: Welcome",
        "You: hello",
        "Bot: Heard hello",
        "You: (silence)",
        "Bot: Heard nothing",
    ]
    assert lines[5] == "(you hang up)"


# --- load mode -----------------------------------------------------------------------------

REPROMPT = "Sorry, I didn't catch that. Could you say it again?"


def _bot_turn(s: Seen) -> str:
    """A bridge in miniature: reprompts silence, holds on 'slow', hangs up on 'bye'."""
    speech = s.params.get("SpeechResult")
    gather = '<Gather input="speech" action="/twilio/turn" actionOnEmptyResult="true">{}</Gather>'
    if speech is None:
        return twiml(gather.format(f"<Say>{REPROMPT}</Say>"))
    if speech == "broken":
        return twiml(gather.format("<Say>Sorry, I'm having trouble right now. Again?</Say>"))
    if speech == "slow":
        return twiml(gather.format("<Say>One moment please.</Say>"))
    if speech == "bye":
        return twiml("<Say>Goodbye</Say>", "<Hangup/>")
    return twiml(gather.format(f"<Say>You said {speech}</Say>"))


@pytest.fixture
def bot(app: App) -> App:
    app.routes["/twilio/voice"] = lambda s: twiml(
        '<Gather input="speech" action="/twilio/turn" actionOnEmptyResult="true">'
        "<Say>Hi</Say></Gather>"
    )
    app.routes["/twilio/turn"] = _bot_turn
    app.routes["/twilio/status"] = lambda s: ""
    return app


def _config(app: App, **kwargs: Any) -> LoadConfig:
    base: dict[str, Any] = dict(
        url=app.url + "/twilio/voice",
        account_sid=ACCOUNT_SID,
        auth_token=TOKEN,
        public_url=PUBLIC,
        think_time_s=0.0,
    )
    return LoadConfig(**{**base, **kwargs})


async def test_load_classifies_every_turn(bot: App) -> None:
    report = await run_load(
        _config(
            bot,
            calls=4,
            ramp_up_s=0.05,
            turns=5,
            script=("hi", None, "slow", "broken", "bye"),
            status_url="/twilio/status",
        )
    )
    # Per call: greeting, "hi", silence, "slow", "broken", "bye" -> 6 turns.
    assert report.turns == 24 and report.calls_started == 4
    assert report.turn_outcomes == {
        "answered": 8,
        "reprompt_silent": 4,
        "reprompt_late": 4,
        "trouble": 4,
        "hangup": 4,
        "error": 0,
    }
    assert report.call_outcomes == {"hangup_by_app": 4}
    assert report.status_callbacks == {"ok": 4, "failed": 0}
    assert report.latency_ms["count"] == 24 and report.latency_ms["p50"] > 0
    assert report.latency_ms["max"] >= report.latency_ms["p99"] >= report.latency_ms["p50"]
    assert all(s.signature_ok for s in bot.seen)
    assert len({s.params["From"] for s in bot.seen}) == 4  # one caller number per call


async def test_load_caller_hangs_up_after_turns_and_errors_counted(bot: App) -> None:
    report = await run_load(_config(bot, calls=3, turns=2, script=("hi",)))
    assert report.call_outcomes == {"caller_hung_up": 3}
    assert report.turn_outcomes["answered"] == 9 and report.turns == 9

    bot.routes["/twilio/turn"] = lambda s: (503, "down")
    report = await run_load(_config(bot, calls=2, turns=3, script=("hi",)))
    assert report.call_outcomes == {"error": 2}
    assert report.turn_outcomes["error"] == 2 and report.turn_outcomes["answered"] == 2
    assert "HTTP 503" in next(iter(report.errors))


async def test_load_duration_bounds_the_run(bot: App) -> None:
    report = await run_load(
        _config(bot, calls=2, turns=MAX_TURNS, script=("hi",), duration_s=0.3, think_time_s=0.01)
    )
    assert report.call_outcomes == {"caller_hung_up": 2}
    assert 2 <= report.turns < 2 * MAX_TURNS


def test_load_config_is_bounded() -> None:
    with pytest.raises(ValueError):
        LoadConfig(url="http://127.0.0.1:1/", account_sid="AC", auth_token="t", calls=0)
    with pytest.raises(ValueError):
        LoadConfig(url="http://127.0.0.1:1/", account_sid="AC", auth_token="t", calls=10**9)


def test_load_cli_writes_report_and_plot(bot: App, tmp_path: Path) -> None:
    script = tmp_path / "script.txt"
    script.write_text("hi\n\nbye\n")
    out = io.StringIO()
    code = cli_main(
        [
            "load",
            "--url",
            bot.url + "/twilio/voice",
            "--account-sid",
            ACCOUNT_SID,
            "--auth-token",
            TOKEN,
            "--public-url",
            PUBLIC,
            "--calls",
            "3",
            "--turns",
            "3",
            "--think-time-s",
            "0",
            "--script",
            str(script),
            "--report",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "p.png"),
            "--quiet",
        ],
        out=out,
    )
    assert code == 0
    assert "p99.9" in out.getvalue() and "reprompt_silent" in out.getvalue()
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["turns"] == 12 and data["calls_started"] == 3
    assert set(data["latency_ms"]) >= {"p50", "p90", "p99", "p99_9", "max", "count"}
    assert data["turn_outcomes"] == {
        "answered": 6,
        "reprompt_silent": 3,
        "reprompt_late": 0,
        "trouble": 0,
        "hangup": 3,
        "error": 0,
    }
    assert data["call_outcomes"] == {"hangup_by_app": 3}
    assert "auth_token" not in data["config"] and data["hdr"]["latency_us"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classifier_trouble_and_late_reprompt() -> None:
    from callsim.call import WebhookRecord
    from callsim.stats import Classifier

    def rec(said: str, after_silence: bool = False) -> WebhookRecord:
        return WebhookRecord(
            "gather", PUBLIC, "POST", {}, 0.0, said=(said,), after_silence=after_silence
        )

    c = Classifier()
    assert c.classify(rec("Sorry, I'm having trouble right now. Please say that again.")) == (
        "trouble"
    )
    assert c.classify(rec(REPROMPT)) == "reprompt_late"  # reprompted although the caller spoke
    assert c.classify(rec(REPROMPT, after_silence=True)) == "reprompt_silent"
    assert c.classify(rec("one   MOMENT please.")) == "reprompt_late"
    assert c.classify(rec("Here you go")) == "answered"


def test_url_map_public_prefix() -> None:
    from callsim.urls import OffsiteUrl, UrlMap

    m = UrlMap("http://127.0.0.1:8080/twilio/voice", "https://voice.example.com/vb/")
    assert m.to_public("http://127.0.0.1:8080/twilio/voice?a=1") == (
        "https://voice.example.com/vb/twilio/voice?a=1"
    )
    assert m.to_transport("https://voice.example.com/vb/twilio/gather?turn=2") == (
        "http://127.0.0.1:8080/twilio/gather?turn=2"
    )
    with pytest.raises(OffsiteUrl):
        m.to_transport("https://voice.example.com/other")
    with pytest.raises(OffsiteUrl):
        m.to_transport("https://evil.example.com/vb/twilio/voice")
