"""callsim's Twilio REST stand-in (`python -m callsim twilio-api`, a real process) driven by
twilio-python's own REST client, and the callee it plays: status callbacks and voice webhooks
to a tiny real webhook app that checks every signature with twilio-python's RequestValidator;
then the real edge placing calls through it (POST /v1/calls) and a campaign."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from callsim.callee import CalleeTable
from callsim.campaign import CampaignConfig, run_campaign
from callsim.cli import main as cli_main
from devstack.stack import Stack, StackConfig
from tests.helpers import Seen, TwimlApp, fetch, serve_twiml_app, twiml, wait_for

ACCOUNT_SID = "AC" + "0" * 31 + "7"
TOKEN = "stand-in-token"
OWNED = "+14155550100"
SAYS = ("I would like to move my appointment.", "Thursday works.")
PERSON, MACHINE, FAX, BUSY, NO_ANSWER, FAILED = (f"+1415555012{d}" for d in "056789")
BOT_HELLO = "Hi, this is the clinic calling about your appointment."
VOICEMAIL = "Please call the clinic back."
ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]


@pytest.fixture(scope="module")
def stand_in() -> Iterator[Stack]:
    """Only the stand-in of a stack (no Redis, bot or edge): started as `make run` starts it."""
    args = ["--owned-number", OWNED, "--ring-s", "0.05", "--no-answer-s", "0.3"]
    for line in SAYS:
        args += ["--say", line]
    stack = Stack(
        StackConfig(account_sid=ACCOUNT_SID, auth_token=TOKEN, twilio_api_args=tuple(args))
    )
    try:
        stack.start_twilio_api()
        yield stack
    finally:
        stack.stop()


def twilio_client(stand_in: Stack, account_sid: str = ACCOUNT_SID, token: str = TOKEN) -> Client:
    # environment={}: no TWILIO_EDGE / TWILIO_REGION from this shell rewriting the host.
    client = Client(account_sid, token, environment={})
    client.api.base_url = stand_in.twilio_api_url
    return client


def _voice(seen: Seen) -> str:
    if seen.params.get("AnsweredBy", "").startswith("machine"):
        return twiml(f"<Say>{VOICEMAIL}</Say><Hangup/>")
    if seen.params.get("AnsweredBy") == "fax":
        return twiml("<Hangup/>")
    return twiml(f'<Gather input="speech" action="/turn"><Say>{BOT_HELLO}</Say></Gather>')


def _turn(seen: Seen) -> str:
    if seen.params.get("SpeechResult") == SAYS[-1]:
        return twiml("<Say>See you Thursday.</Say><Hangup/>")
    return twiml('<Gather input="speech" action="/turn"><Say>Which day suits you?</Say></Gather>')


@pytest.fixture()
def webhooks() -> Iterator[TwimlApp]:
    app = TwimlApp(token=TOKEN)
    app.routes.update({"/voice": _voice, "/turn": _turn, "/status": lambda s: (204, "")})
    with serve_twiml_app(app) as served:
        yield served


def place(stand_in: Stack, app: TwimlApp, to: str, **kwargs: Any) -> Any:
    kwargs.setdefault("url", f"{app.url}/voice")
    kwargs.setdefault("status_callback", f"{app.url}/status")
    kwargs.setdefault("status_callback_event", ALL_EVENTS)
    return twilio_client(stand_in).calls.create(to=to, from_=OWNED, **kwargs)


def played(stand_in: Stack, sid: str) -> dict[str, Any]:
    answer = fetch(f"{stand_in.twilio_api_url}/_callsim/calls?sid={sid}")
    assert answer.status_code == 200
    (call,) = answer.json()["calls"]
    return dict(call)


def finished(stand_in: Stack, sid: str) -> dict[str, Any]:
    wait_for(lambda: played(stand_in, sid)["done"], timeout_s=20)
    return played(stand_in, sid)


def _all_calls(stand_in: Stack) -> list[dict[str, Any]]:
    return list(fetch(f"{stand_in.twilio_api_url}/_callsim/calls").json()["calls"])


def statuses(app: TwimlApp) -> list[str]:
    return [s.params["CallStatus"] for s in app.seen if s.path == "/status"]


# -- the REST surface -------------------------------------------------------------------------


def test_twilio_python_creates_a_call_and_parses_the_resource(
    stand_in: Stack, webhooks: TwimlApp
) -> None:
    call = place(stand_in, webhooks, PERSON)
    assert call.sid.startswith("CA") and len(call.sid) == 34
    int(call.sid[2:], 16)
    assert call.status == "queued" and call.direction == "outbound-api"
    assert (call.to, call._from, call.account_sid) == (PERSON, OWNED, ACCOUNT_SID)
    assert call.api_version == "2010-04-01" and call.date_created is not None
    assert call.uri == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{call.sid}.json"
    finished(stand_in, call.sid)
    again = twilio_client(stand_in).calls(call.sid).fetch()
    assert again.status == "completed" and again.start_time and again.end_time
    assert again.duration is not None and int(again.duration) >= 0


@pytest.mark.parametrize(
    ("kwargs", "code", "words"),
    [
        ({"to": ""}, 21201, "No 'To' number"),
        ({"from_": ""}, 21213, "No 'From' number"),
        ({"url": None}, 21205, "Url parameter is required"),
        ({"url": "not a url"}, 21205, "Url is not a valid URL"),
        ({"to": "4155550123"}, 21211, "Invalid 'To' Phone Number"),
        ({"to": "+1 415 555 0123"}, 21211, "Invalid 'To' Phone Number"),
        ({"from_": "+0123"}, 21212, "Invalid 'From' Phone Number"),
        ({"from_": "+14155550999"}, 21210, "not yet verified"),
        ({"machine_detection": "Sometimes"}, 21200, "MachineDetection"),
        ({"status_callback_event": ["initiated", "picked-up"]}, 21200, "StatusCallbackEvent"),
    ],
)
def test_refusals_are_twilio_s_codes(
    stand_in: Stack, kwargs: dict[str, Any], code: int, words: str
) -> None:
    params: dict[str, Any] = {"to": PERSON, "from_": OWNED, "url": "https://example.com/voice"}
    params.update(kwargs)
    if params["url"] is None:
        del params["url"]
    before = len(_all_calls(stand_in))
    with pytest.raises(TwilioRestException) as caught:
        twilio_client(stand_in).calls.create(**params)
    assert (caught.value.status, caught.value.code) == (400, code)
    assert words in caught.value.msg
    assert len(_all_calls(stand_in)) == before  # nothing placed


@pytest.mark.parametrize(
    ("account_sid", "token"),
    [(ACCOUNT_SID, "wrong-token"), ("AC" + "9" * 32, TOKEN)],
    ids=["wrong token", "another account"],
)
def test_wrong_credentials_are_401_authenticate(
    stand_in: Stack, account_sid: str, token: str
) -> None:
    client = twilio_client(stand_in, account_sid, token)
    with pytest.raises(TwilioRestException) as caught:
        client.calls.create(to=PERSON, from_=OWNED, url="https://example.com/voice")
    assert (caught.value.status, caught.value.code) == (401, 20003)
    no_auth = fetch(
        f"{stand_in.twilio_api_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json",
        method="POST",
        body=b"To=%2B14155550120",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert no_auth.status_code == 401 and no_auth.json()["code"] == 20003
    assert no_auth.json()["more_info"] == "https://www.twilio.com/docs/errors/20003"
    assert no_auth.headers["WWW-Authenticate"].startswith("Basic")


def test_an_unknown_call_is_404(stand_in: Stack) -> None:
    with pytest.raises(TwilioRestException) as caught:
        twilio_client(stand_in).calls("CA" + "f" * 32).fetch()
    assert (caught.value.status, caught.value.code) == (404, 20404)


# -- the callee -------------------------------------------------------------------------------


def test_a_person_answers_signed_callbacks_then_talks(stand_in: Stack, webhooks: TwimlApp) -> None:
    call = place(stand_in, webhooks, PERSON, machine_detection="Enable")
    seen = finished(stand_in, call.sid)
    wait_for(lambda: statuses(webhooks)[-1:] == ["completed"])
    assert all(s.signature_ok for s in webhooks.seen)
    assert [s.path.split("?")[0] for s in webhooks.seen] == [
        "/status",
        "/status",
        "/status",
        "/voice",
        "/turn",
        "/turn",
        "/status",
    ]
    assert statuses(webhooks) == ["initiated", "ringing", "in-progress", "completed"]
    callbacks = [s.params for s in webhooks.seen if s.path == "/status"]
    assert [c["SequenceNumber"] for c in callbacks] == ["0", "1", "2", "3"]
    assert all(c["Direction"] == "outbound-api" and c["CallSid"] == call.sid for c in callbacks)
    assert "AnsweredBy" not in callbacks[0] and callbacks[-1]["AnsweredBy"] == "human"
    assert int(callbacks[-1]["CallDuration"]) >= 0
    voice = next(s.params for s in webhooks.seen if s.path == "/voice")
    assert voice["AnsweredBy"] == "human" and voice["CallStatus"] == "in-progress"
    assert voice["Direction"] == "outbound-api" and voice["AccountSid"] == ACCOUNT_SID
    assert (voice["From"], voice["To"], voice["CallSid"]) == (OWNED, PERSON, call.sid)
    turns = [s.params for s in webhooks.seen if s.path == "/turn"]
    assert [t["SpeechResult"] for t in turns] == list(SAYS)
    assert all(t["AnsweredBy"] == "human" for t in turns)
    assert seen["kind"] == "person" and seen["outcome"] == "hangup_by_app"
    assert seen["heard"] == [BOT_HELLO, "Which day suits you?", "See you Thursday."]
    assert seen["requested_at"] < seen["answered_at"] <= seen["first_words_at"] <= seen["ended_at"]
    assert (
        seen["status"] == "completed"
        and [c.get("http_status") for c in seen["callbacks"]] == [204] * 4
    )


@pytest.mark.parametrize(
    ("to", "detection", "answered_by", "heard"),
    [
        (MACHINE, "Enable", "machine_start", [VOICEMAIL]),
        (MACHINE, "DetectMessageEnd", "machine_end_beep", [VOICEMAIL]),
        (FAX, "Enable", "fax", []),
    ],
)
def test_a_machine_answers_as_detection_tells_it(
    stand_in: Stack,
    webhooks: TwimlApp,
    to: str,
    detection: str,
    answered_by: str,
    heard: list[str],
) -> None:
    call = place(stand_in, webhooks, to, machine_detection=detection)
    seen = finished(stand_in, call.sid)
    voice = [s.params for s in webhooks.seen if s.path == "/voice"]
    assert [v["AnsweredBy"] for v in voice] == [answered_by]
    assert seen["answered_by"] == answered_by and seen["heard"] == heard
    assert seen["outcome"] == "hangup_by_app"  # the bridge ended it, not the machine
    wait_for(lambda: statuses(webhooks)[-1:] == ["completed"])
    assert all(s.signature_ok for s in webhooks.seen)


def test_a_machine_that_is_talked_to_hangs_up(stand_in: Stack, webhooks: TwimlApp) -> None:
    webhooks.routes["/voice"] = lambda s: twiml(
        '<Gather input="speech" action="/turn" actionOnEmptyResult="true">'
        "<Say>Are you there?</Say></Gather>"
    )
    call = place(stand_in, webhooks, MACHINE, machine_detection="Enable")
    seen = finished(stand_in, call.sid)
    assert seen["outcome"] == "caller_hung_up"  # silent once, then gone
    turns = [s.params for s in webhooks.seen if s.path == "/turn"]
    assert len(turns) == 1 and "SpeechResult" not in turns[0]


def test_without_machine_detection_there_is_no_answered_by(
    stand_in: Stack, webhooks: TwimlApp
) -> None:
    call = place(stand_in, webhooks, MACHINE, status_callback_event=None)
    seen = finished(stand_in, call.sid)
    wait_for(lambda: statuses(webhooks) == ["completed"])  # only `completed` when none asked
    assert all("AnsweredBy" not in s.params for s in webhooks.seen)
    assert seen["answered_by"] is None and seen["heard"] == [BOT_HELLO]


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        (BUSY, ["initiated", "busy"]),
        (NO_ANSWER, ["initiated", "ringing", "no-answer"]),
        (FAILED, ["initiated", "failed"]),
    ],
)
def test_busy_no_answer_and_failed_get_only_status_callbacks(
    stand_in: Stack, webhooks: TwimlApp, to: str, expected: list[str]
) -> None:
    call = place(stand_in, webhooks, to, machine_detection="Enable")
    seen = finished(stand_in, call.sid)
    wait_for(lambda: len(statuses(webhooks)) == len(expected))
    assert statuses(webhooks) == expected
    assert [s.path for s in webhooks.seen] == ["/status"] * len(expected)
    assert all(s.signature_ok for s in webhooks.seen)
    last = webhooks.seen[-1].params
    assert last["CallDuration"] == "0" and "AnsweredBy" not in last
    assert seen["status"] == expected[-1] and seen["first_words_at"] is None
    assert twilio_client(stand_in).calls(call.sid).fetch().status == expected[-1]


def test_async_amd_reports_to_its_own_callback(stand_in: Stack, webhooks: TwimlApp) -> None:
    webhooks.routes["/amd"] = lambda s: (204, "")
    call = place(
        stand_in,
        webhooks,
        MACHINE,
        machine_detection="DetectMessageEnd",
        async_amd="true",
        async_amd_status_callback=f"{webhooks.url}/amd",
    )
    finished(stand_in, call.sid)
    wait_for(lambda: any(s.path == "/amd" for s in webhooks.seen))
    voice = next(s.params for s in webhooks.seen if s.path == "/voice")
    amd = next(s for s in webhooks.seen if s.path == "/amd")
    assert "AnsweredBy" not in voice
    assert amd.signature_ok and amd.params["AnsweredBy"] == "machine_end_beep"


def test_the_callee_table_takes_the_longest_suffix() -> None:
    table = CalleeTable.parse(["0000=failed", "12=busy"])
    assert table.kind_for("+14155550000") == "failed"
    assert table.kind_for("+14155550010") == "person"
    assert table.kind_for("+14155550112") == "busy"
    assert table.kind_for("+14155550115") == "machine"
    with pytest.raises(ValueError, match="DIGITS=KIND"):
        CalleeTable.parse(["5=robot"])


# -- through voicebridge: POST /v1/calls, the bot, a campaign ----------------------------------

API_TOKEN = "outbound-test-token"


@pytest.fixture(scope="module")
def outbound_stack() -> Iterator[Stack]:
    from tests.helpers import start_stack

    stack = start_stack(
        StackConfig(
            workers=1,
            twilio_api=True,
            twilio_api_args=("--ring-s", "0.05", "--no-answer-s", "0.3", "--say", SAYS[0]),
            api_token=API_TOKEN,
            edge_env={"OUTBOUND_MAX_CPS": "50", "OUTBOUND_FROM": OWNED},
            worker_env={"BOT_QUIET_MS": "100"},
        )
    )
    yield stack
    stack.stop()


def _api_call(stack: Stack, to: str) -> dict[str, Any]:
    answer = fetch(
        f"{stack.edge_url}/v1/calls",
        method="POST",
        body=json.dumps({"to": to, "context": {"appointment": "A-17"}}).encode(),
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 202, (answer.status_code, answer.text, stack.logs())
    return dict(answer.json())


def test_the_bot_calls_a_person_who_talks_to_it(outbound_stack: Stack) -> None:
    placed = _api_call(outbound_stack, PERSON)
    seen = finished(outbound_stack, placed["callSid"])
    assert seen["kind"] == "person" and seen["answered_by"] == "human", seen
    assert seen["first_words_at"] is not None and seen["error"] is None, seen
    assert any(SAYS[0] in words for words in seen["heard"][1:]), seen  # the bot heard them
    assert [c["event"] for c in seen["callbacks"]] == ALL_EVENTS, seen  # as the edge asks
    assert all(200 <= c.get("http_status", 0) < 300 for c in seen["callbacks"]), seen
    state = fetch(
        f"{outbound_stack.edge_url}/v1/calls/{placed['callSid']}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ).json()
    assert state["status"] == "completed" and state["answeredBy"] == "human", state


def test_a_machine_gets_the_voicemail_message_and_the_call_ends(outbound_stack: Stack) -> None:
    placed = _api_call(outbound_stack, MACHINE)
    seen = finished(outbound_stack, placed["callSid"])
    assert seen["answered_by"].startswith("machine_"), seen
    assert seen["heard"] and seen["outcome"] == "hangup_by_app", seen


def test_a_campaign_reports_every_outcome(outbound_stack: Stack) -> None:
    config = CampaignConfig(
        api_url=f"{outbound_stack.edge_url}/v1/calls",
        token=API_TOKEN,
        stand_in_url=outbound_stack.twilio_api_url,
        calls=20,
        rate_per_s=20.0,
        to_pattern="+1415556{i:04d}",
        finish_timeout_s=60,
    )
    report = asyncio.run(run_campaign(config))
    assert report.accepted == 20 and not report.refused, report.to_json()
    assert dict(report.outcomes) == {
        "answered": 10,
        "voicemail": 2,
        "fax": 2,
        "busy": 2,
        "no-answer": 2,
        "failed": 2,
    }, report.to_json()
    figures = report.to_json()["first_words_ms"]
    assert figures["answered"]["count"] == 10 and figures["voicemail"]["count"] == 2
    assert 0 < figures["answered"]["p50"] < 10_000


def test_the_campaign_command_prints_its_table(outbound_stack: Stack) -> None:
    out = io.StringIO()
    code = cli_main(
        [
            "campaign",
            "--api",
            f"{outbound_stack.edge_url}/v1/calls",
            "--token",
            API_TOKEN,
            "--twilio-api",
            outbound_stack.twilio_api_url,
            "-n",
            "3",
            "--rate",
            "10",
            "--to-pattern",
            "+1415557{i:04d}",
            "--quiet",
        ],
        out,
    )
    text = out.getvalue()
    assert code == 0, text
    assert "answered" in text and "request to first words" in text


def test_a_wrong_token_is_refused_and_counted(outbound_stack: Stack) -> None:
    config = CampaignConfig(
        api_url=f"{outbound_stack.edge_url}/v1/calls",
        token="not-the-token",
        stand_in_url=outbound_stack.twilio_api_url,
        calls=2,
        rate_per_s=50.0,
    )
    report = asyncio.run(run_campaign(config))
    assert report.accepted == 0 and dict(report.refused) == {"401": 2}


def test_a_campaign_over_the_cps_limit_queues_its_calls(new_stack: Callable[..., Stack]) -> None:
    stack = new_stack(
        twilio_api=True,
        twilio_api_args=("--ring-s", "0.05"),
        api_token=API_TOKEN,
        edge_env={"OUTBOUND_MAX_CPS": "2", "OUTBOUND_FROM": OWNED},
    )
    config = CampaignConfig(
        api_url=f"{stack.edge_url}/v1/calls",
        token=API_TOKEN,
        stand_in_url=stack.twilio_api_url,
        calls=6,
        rate_per_s=50.0,
        to_pattern="+141555800{i}0",  # people only (last digit 0)
        finish_timeout_s=60,
    )
    report = asyncio.run(run_campaign(config))
    assert report.accepted == 6 and report.throttled > 0 and not report.refused
    assert report.outcomes["answered"] == 6
    # Queued behind the limit: 6 calls at 2 per second cannot all start within the first one.
    assert report.to_json()["first_words_ms"]["answered"]["max"] > 1000


def test_relay_mode_an_outbound_person_talks_over_conversation_relay(
    new_stack: Callable[..., Stack],
) -> None:
    stack = new_stack(
        twilio_api=True,
        twilio_api_args=("--ring-s", "0.05", "--say", "Thursday."),
        api_token=API_TOKEN,
        edge_env={"VOICE_MODE": "relay", "OUTBOUND_FROM": OWNED},
        worker_env={"BOT_QUIET_MS": "100"},
    )
    placed = _api_call(stack, PERSON)
    seen = finished(stack, placed["callSid"])
    assert seen["answered_by"] == "human" and seen["error"] is None, seen
    assert any("Thursday." in words for words in seen["heard"]), seen  # the bot heard them
    assert [c["event"] for c in seen["callbacks"]] == ALL_EVENTS, seen  # as the edge asks
    assert all(200 <= c.get("http_status", 0) < 300 for c in seen["callbacks"]), seen


def test_a_create_request_in_transit_places_nothing_if_its_client_is_gone() -> None:
    # --api-latency-s: the create request takes that long to reach Twilio (the fault suite's
    # edge kill needs API requests in flight). A client gone by then placed no call.
    stack = Stack(
        StackConfig(
            account_sid=ACCOUNT_SID,
            auth_token=TOKEN,
            twilio_api_args=("--ring-s", "0.05", "--api-latency-s", "0.5"),
        )
    )
    form = {"To": PERSON, "From": OWNED, "Url": "https://example.com/voice"}
    url = f"{{}}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"

    async def abandon() -> None:
        auth = aiohttp.BasicAuth(ACCOUNT_SID, TOKEN)
        async with aiohttp.ClientSession(auth=auth) as session:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await session.post(url.format(stack.twilio_api_url), data=form)

    try:
        stack.start_twilio_api()
        asyncio.run(abandon())
        started = time.monotonic()
        call = twilio_client(stack).calls.create(to=PERSON, from_=OWNED, url=form["Url"])
        assert time.monotonic() - started >= 0.5  # answered after its time in transit
        listed = json.loads(fetch(f"{stack.twilio_api_url}/_callsim/calls").text)["calls"]
        assert [c["sid"] for c in listed] == [call.sid]  # the abandoned request placed none
    finally:
        stack.stop()
