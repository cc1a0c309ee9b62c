"""Outbound calls through real processes: POST /v1/calls on the edge (gunicorn) places the call
with twilio-python's client at callsim's Twilio REST stand-in (`python -m callsim twilio-api`),
which plays the callee by the number's last digit (0-4 person, 5 machine, 6 fax, 7 busy) and
posts the signed webhooks back; botsim is the bot. Two app instances in this process (the
edge's own create_app) show OUTBOUND_MAX_CPS holding across edge processes, and a Twilio that
cuts the connection shows the call recorded before Twilio was asked."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import falcon.testing
import pytest
import redis
import redis.asyncio
from aiohttp import web

from callsim.signing import SIGNATURE_HEADER, sign
from devstack.processes import Launcher, Managed, free_port, wait_until
from devstack.stack import DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, Stack, StackConfig
from edge.app import create_app
from edge.settings import DEFAULT_VOICEMAIL, EdgeSettings
from shared import keys
from shared.config import ConfigError
from shared.outbound_store import OutboundRecord, OutboundStore
from shared.pb import voicebridge_pb2 as pb
from tests.helpers import Response, fetch, start_stack, wait_for

TOKEN = "outbound-test-token"
OUR_NUMBER = "+14155550199"
PERSON, MACHINE, FAX, BUSY = "+14155550100", "+14155550105", "+14155550106", "+14155550107"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
GREETING = "Hello! This is the outbound bot calling about your order."
VOICEMAIL_REPLY = "Hi {to}, sorry we missed you ({answeredBy}). Please call back."
SCENARIO = {
    "name": "outbound",
    "greeting": [GREETING],
    "rules": [{"when": r"\bbye\b", "reply": ["Goodbye!"], "hangup": True}],
    "fallback": ["You said: {text}"],
    "events": {"voicemail": [VOICEMAIL_REPLY]},
}
PERSON_SAYS = ("Hello, who is this?", "Thanks, bye")


@pytest.fixture(scope="module")
def twilio_api() -> Iterator[str]:
    """callsim's Twilio REST stand-in as a process; only OUR_NUMBER may place calls."""
    port = free_port()
    proc: Managed = Launcher().python_module(
        "twilio-api",
        "callsim",
        {},
        "twilio-api",
        "--port",
        str(port),
        "--account-sid",
        DEMO_ACCOUNT_SID,
        "--auth-token",
        DEMO_AUTH_TOKEN,
        "--owned-number",
        OUR_NUMBER,
        *(arg for line in PERSON_SAYS for arg in ("--say", line)),
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: "listening on" in proc.log_tail(20), 30, "callsim twilio-api", proc.proc)
    yield url
    proc.stop()


def _edge_env(twilio_url: str, **extra: str) -> dict[str, str]:
    return {
        "API_TOKEN": TOKEN,
        "OUTBOUND_FROM": OUR_NUMBER,
        "TWILIO_API_BASE_URL": twilio_url,
        # Other tests' calls must not take this test's second; the CPS test sets its own.
        "OUTBOUND_MAX_CPS": "100",
        **extra,
    }


@pytest.fixture(scope="module")
def gather_stack(twilio_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    scenario = tmp_path_factory.mktemp("outbound") / "outbound.json"
    scenario.write_text(json.dumps(SCENARIO))
    s = start_stack(
        StackConfig(
            workers=1,
            edge_workers=2,
            botsim_args=("--scenario", str(scenario)),
            edge_env=_edge_env(twilio_api, REPLY_DEADLINE_MS="3000"),
            worker_env={"BOT_QUIET_MS": "100"},
        )
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def relay_stack(twilio_api: str) -> Iterator[Stack]:
    """Relay mode with botsim's echo bot, which says nothing to a `voicemail` event."""
    s = start_stack(
        StackConfig(
            workers=1,
            edge_env=_edge_env(
                twilio_api, VOICE_MODE="relay", REPLY_DEADLINE_MS="1000", VOICEMAIL_WAIT_MS="300"
            ),
            worker_env={"BOT_QUIET_MS": "100"},
        )
    )
    yield s
    s.stop()


# -- helpers -------------------------------------------------------------------------------------


def place(stack: Stack, body: Any, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return fetch(
        f"{stack.edge_url}/v1/calls",
        method="POST",
        body=raw,
        headers=AUTH if headers is None else headers,
        timeout_s=20,
    )


def show(stack: Stack, sid: str) -> Response:
    return fetch(f"{stack.edge_url}/v1/calls/{sid}", headers=AUTH)


def played(twilio_url: str, sid: str | None = None) -> list[dict[str, Any]]:
    query = f"?sid={sid}" if sid else ""
    calls: list[dict[str, Any]] = fetch(f"{twilio_url}/_callsim/calls{query}").json()["calls"]
    return calls


def played_to_the_end(twilio_url: str, sid: str) -> dict[str, Any]:
    wait_for(lambda: played(twilio_url, sid)[0]["done"], 30)
    return played(twilio_url, sid)[0]


def final_state(stack: Stack, sid: str) -> dict[str, Any]:
    """GET /v1/calls/{sid} once the status callbacks said the call is over."""
    final = {"completed", "busy", "no-answer", "failed", "canceled"}
    wait_for(lambda: show(stack, sid).json()["status"] in final, 30)
    state: dict[str, Any] = show(stack, sid).json()
    return state


def outbound_keys(stack: Stack) -> set[bytes]:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        return {k for k in client.scan_iter("vb:outbound:*") if k != keys.OUTBOUND_CPS.encode()}
    finally:
        client.close()


def streamed_turns(stack: Stack) -> list[pb.TurnRequest]:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        entries = client.xrange(keys.TURN_STREAM)
    finally:
        client.close()
    return [pb.TurnRequest.FromString(fields[keys.TURN_FIELD]) for _, fields in entries]


def opening_metadata(stack: Stack, sid: str, person: str) -> dict[str, Any]:
    """metadata.voicebridge of the call's opening message, as botsim (the bot) received it."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        found = [k for k in client.scan_iter("vb:caller:*") if k.endswith(person[1:].encode())]
        assert found, "the person called has no Botpress user"
        user_key = client.get(found[0])
    finally:
        client.close()
    assert user_key is not None
    listed = fetch(
        f"{stack.chat_url}/conversations/{sid}/messages",
        headers={"x-user-key": user_key.decode()},
    ).json()["messages"]
    metas = [(m.get("metadata") or {}).get("voicebridge") or {} for m in listed]
    opening = [m for m in metas if m.get("kind") == "call_start"]
    assert len(opening) == 1, listed
    return opening[0]


# -- the API's refusals --------------------------------------------------------------------------


def test_every_refusal_places_nothing(gather_stack: Stack, twilio_api: str) -> None:
    before_calls, before_keys = len(played(twilio_api)), outbound_keys(gather_stack)
    person = {"to": PERSON}
    cases = [
        (place(gather_stack, person, headers={}), 401),
        (place(gather_stack, person, headers={**AUTH, "Authorization": "Bearer nope"}), 401),
        (place(gather_stack, person, headers={**AUTH, "Authorization": f"Basic {TOKEN}"}), 401),
        (place(gather_stack, {"to": "4155550100"}), 422),  # not E.164
        (place(gather_stack, {"to": "+447700900123"}), 422),  # +44 is not allowed by default
        (place(gather_stack, {"to": "+19005550100"}), 422),  # premium rate: not part of +1
        (place(gather_stack, {"to": PERSON, "context": ["not", "an", "object"]}), 422),
        (place(gather_stack, {"to": PERSON, "lang": "en"}), 422),  # unknown field
        (place(gather_stack, {"to": PERSON, "context": {"x": "y" * 4100}}), 413),
        (place(gather_stack, b"{" + b" " * 9000 + b"}"), 413),
        (place(gather_stack, b"not json"), 400),
    ]
    for resp, status in cases:
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["message"]
    assert cases[0][0].headers["WWW-Authenticate"] == "Bearer"
    assert len(played(twilio_api)) == before_calls
    assert outbound_keys(gather_stack) == before_keys
    assert show(gather_stack, "CA" + "0" * 32).status_code == 404
    assert fetch(f"{gather_stack.edge_url}/v1/calls/CA{'0' * 32}").status_code == 401


def test_twilio_refusal_is_a_502_with_its_code(gather_stack: Stack, twilio_api: str) -> None:
    before = len(played(twilio_api))
    resp = place(gather_stack, {"to": PERSON, "from": "+14155550111"})  # not our number
    assert resp.status_code == 502, resp.text
    error = resp.json()["error"]
    assert error["code"] == 21210
    assert "not yet verified" in error["message"]
    assert len(played(twilio_api)) == before


def test_no_api_token_no_api(gather_stack: Stack) -> None:
    settings = EdgeSettings.from_env(
        {
            "PUBLIC_URL": gather_stack.public_url,
            "TWILIO_ACCOUNT_SID": DEMO_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEMO_AUTH_TOKEN,
            "REDIS_URL": gather_stack.redis_url,
        }
    )
    client = falcon.testing.TestClient(create_app(settings))
    assert client.simulate_post("/v1/calls", json={"to": PERSON}, headers=AUTH).status_code == 404
    assert client.simulate_get(f"/v1/calls/CA{'0' * 32}", headers=AUTH).status_code == 404


# -- calls -----------------------------------------------------------------------------------------


def test_person_talks_with_the_bot_and_it_hears_the_context(
    gather_stack: Stack, twilio_api: str
) -> None:
    context = {"orderId": "A-17", "reason": "delivery window"}
    resp = place(gather_stack, {"to": PERSON, "context": context})
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    sid = answer["callSid"]
    assert re.fullmatch(r"CA[0-9a-f]{32}", sid) and answer["status"] == "queued"

    seen = played_to_the_end(twilio_api, sid)
    assert seen["answered_by"] == "human", seen
    assert seen["heard"][0] == GREETING
    assert "You said: Hello, who is this?" in seen["heard"]
    assert seen["heard"][-1] == "Goodbye!"
    assert seen["outcome"] == "hangup_by_app", seen
    state = final_state(gather_stack, sid)
    assert state["status"] == "completed" and state["answeredBy"] == "human"
    assert isinstance(state["duration"], int) and state["to"] == PERSON

    meta = opening_metadata(gather_stack, sid, PERSON)
    assert meta["direction"] == "outbound" and meta["answeredBy"] == "human"
    assert meta["context"] == context
    assert meta["to"] == PERSON and meta["from"] == OUR_NUMBER and meta["callSid"] == sid


def test_machine_hears_the_bots_voicemail_and_the_call_ends(
    gather_stack: Stack, twilio_api: str
) -> None:
    resp = place(gather_stack, {"to": MACHINE, "context": {"orderId": "B-2"}})
    assert resp.status_code == 202, resp.text
    sid = resp.json()["callSid"]
    seen = played_to_the_end(twilio_api, sid)
    assert seen["answered_by"] == "machine_end_beep"
    # The bot's reply to the voicemail event, once, then the hang-up: no Gather, no second turn.
    assert seen["heard"] == [VOICEMAIL_REPLY.format(to=MACHINE, answeredBy="machine_end_beep")]
    assert seen["webhooks"] == 1 and seen["outcome"] == "hangup_by_app", seen
    state = final_state(gather_stack, sid)
    assert state["status"] == "completed" and state["answeredBy"] == "machine_end_beep"


def test_fax_is_hung_up_at_once_and_busy_is_reported(gather_stack: Stack, twilio_api: str) -> None:
    fax = place(gather_stack, {"to": FAX}).json()["callSid"]
    busy = place(gather_stack, {"to": BUSY}).json()["callSid"]
    seen = played_to_the_end(twilio_api, fax)
    assert seen["heard"] == [] and seen["webhooks"] == 1 and seen["outcome"] == "hangup_by_app"
    # Nothing reached the bot: no conversation for the fax's call.
    conversations = fetch(f"{gather_stack.chat_url}/_botsim/turns").json()["conversations"]
    assert fax not in conversations
    assert final_state(gather_stack, fax)["answeredBy"] == "fax"
    assert final_state(gather_stack, busy) == {
        "callSid": busy,
        "status": "busy",
        "to": BUSY,
        "from": OUR_NUMBER,
        "answeredBy": None,
        "duration": 0,
    }


def test_idempotency_key_places_one_call(gather_stack: Stack, twilio_api: str) -> None:
    headers = {**AUTH, "Idempotency-Key": "reminder-7781"}
    body = {"to": BUSY, "context": {"reminder": 7781}}
    first = place(gather_stack, body, headers=headers)
    second = place(gather_stack, body, headers=headers)
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    sid = first.json()["callSid"]
    assert second.json()["callSid"] == sid
    assert second.headers["Idempotent-Replayed"] == "true"
    assert [c["sid"] for c in played(twilio_api) if c["sid"] == sid] == [sid]
    other = place(gather_stack, {**body, "to": PERSON}, headers=headers)
    assert other.status_code == 422, other.text  # the same key for another request
    assert len([c for c in played(twilio_api) if c["to"] == PERSON and c["sid"] == sid]) == 0


def test_a_key_whose_edge_died_before_asking_twilio_is_placed_by_its_retry(
    gather_stack: Stack, twilio_api: str
) -> None:
    """An edge recorded the call (begin) and died before Twilio answered it: the client's retry
    with the same Idempotency-Key places the call, once, instead of "in progress" for a day."""
    body = {"to": BUSY, "context": {"reminder": 99}}
    raw = json.dumps(body).encode()
    record = OutboundRecord(
        call_id="d" * 24,
        status="initiating",
        to=BUSY,
        from_=OUR_NUMBER,
        context_json=json.dumps(body["context"], separators=(",", ":")),
        request_digest=hashlib.sha256(raw).hexdigest(),
    )

    async def begun_by_a_dead_edge() -> None:
        rdb = redis.asyncio.Redis.from_url(gather_stack.redis_url)
        try:
            begun = await OutboundStore(rdb).begin(record, "dead-edge-key", 100)
            assert begun.outcome == "new"
            # It began longer ago than any Twilio request of its edge can last.
            await rdb.hset(keys.outbound_call(record.call_id), "asked_ms", 0)
        finally:
            await rdb.aclose()

    asyncio.run(begun_by_a_dead_edge())
    headers = {**AUTH, "Idempotency-Key": "dead-edge-key"}
    resp = place(gather_stack, raw, headers=headers)
    assert resp.status_code == 202, resp.text
    sid = resp.json()["callSid"]
    again = place(gather_stack, raw, headers=headers)  # and the key now answers that call
    assert again.status_code == 202 and again.json()["callSid"] == sid, again.text
    assert [c["sid"] for c in played(twilio_api) if c["sid"] == sid] == [sid]
    assert final_state(gather_stack, sid)["status"] == "busy"


def _signed_post(stack: Stack, path: str, params: dict[str, str], timeout_s: float) -> Response:
    url = f"{stack.edge_url}{path}"
    return fetch(
        url,
        method="POST",
        body=urlencode(params).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            SIGNATURE_HEADER: sign(url, params, DEMO_AUTH_TOKEN),
        },
        timeout_s=timeout_s,
    )


def test_a_webhook_cut_by_a_dying_edge_is_answered_at_the_fallback_url(
    relay_stack: Stack,
) -> None:
    """A machine's voice webhook is held for the bot's voicemail reply; its edge dies (here: the
    connection is cut) and Twilio requests the FallbackUrl: the same turn, answered there with
    the voicemail, the bot told once. A later webhook's fallback: the trouble phrase, and the
    same turn is listened for again."""
    sid = "CA" + "f" * 32
    call = {
        "AccountSid": DEMO_ACCOUNT_SID,
        "CallSid": sid,
        "CallStatus": "in-progress",
        "Direction": "outbound-api",
        "AnsweredBy": "machine_end_beep",
        "From": OUR_NUMBER,
        "To": MACHINE,
    }
    with pytest.raises(TimeoutError):  # cut before VOICEMAIL_WAIT_MS (300 ms) is up
        _signed_post(relay_stack, "/twilio/voice", call, timeout_s=0.1)
    failed = {**call, "ErrorCode": "11200", "ErrorUrl": f"{relay_stack.edge_url}/twilio/voice"}
    answer = _signed_post(relay_stack, "/twilio/fallback", failed, timeout_s=5)
    assert answer.status_code == 200, answer.text
    assert DEFAULT_VOICEMAIL in answer.text and "<Hangup" in answer.text, answer.text
    assert "<Gather" not in answer.text and "<Connect" not in answer.text
    # One turn on the stream, not two: the fallback took the same turn 0 again.
    assert [t.turn_id for t in streamed_turns(relay_stack) if t.call_sid == sid] == [f"{sid}:0"]
    later = {**failed, "ErrorUrl": f"{relay_stack.edge_url}/twilio/gather?turn=3&silent=0"}
    again = _signed_post(relay_stack, "/twilio/fallback", later, timeout_s=5)
    assert again.status_code == 200 and "<Gather" in again.text, again.text
    assert "turn=3" in again.text, again.text


def test_relay_mode_person_and_machine(relay_stack: Stack, twilio_api: str) -> None:
    person = place(relay_stack, {"to": PERSON, "context": {"visit": "tuesday"}})
    machine = place(relay_stack, {"to": MACHINE})
    assert person.status_code == machine.status_code == 202
    sid = person.json()["callSid"]
    seen = played_to_the_end(twilio_api, sid)
    assert seen["heard"][0].startswith("Hello! I am the echo bot."), seen
    assert any("You said: Hello, who is this?" in h for h in seen["heard"]), seen
    assert seen["heard"][-1].startswith("Goodbye!") and seen["outcome"] == "hangup_by_app"
    meta = opening_metadata(relay_stack, sid, PERSON)
    assert meta["direction"] == "outbound" and meta["answeredBy"] == "human"
    assert meta["context"] == {"visit": "tuesday"}
    # The echo bot says nothing to `voicemail`: VOICEMAIL_MESSAGE after VOICEMAIL_WAIT_MS (300),
    # not the 1 s REPLY_DEADLINE_MS, then the end.
    left = played_to_the_end(twilio_api, machine.json()["callSid"])
    assert left["heard"] == [DEFAULT_VOICEMAIL] and left["webhooks"] == 1, left
    assert 0.3 <= left["first_words_at"] - left["answered_at"] < 0.9, left


# -- across edge processes, and an edge that loses Twilio's answer ---------------------------------


def _settings(stack: Stack, twilio_url: str, **extra: str) -> EdgeSettings:
    return EdgeSettings.from_env(
        {
            "PUBLIC_URL": stack.public_url,
            "TWILIO_ACCOUNT_SID": DEMO_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEMO_AUTH_TOKEN,
            "REDIS_URL": stack.redis_url,
            "GRPC_BIND_HOST": "127.0.0.1",
            "GRPC_TOKEN": stack.grpc_token,
            **_edge_env(twilio_url, **extra),
        }
    )


async def _cps_window_empty(stack: Stack) -> None:
    client = redis.asyncio.Redis.from_url(stack.redis_url)
    try:
        for _ in range(200):
            if await client.zcard(keys.OUTBOUND_CPS) == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the outbound CPS window never emptied")
    finally:
        await client.aclose()


async def test_max_cps_holds_across_two_edge_processes(
    gather_stack: Stack, twilio_api: str
) -> None:
    settings = _settings(gather_stack, twilio_api, OUTBOUND_MAX_CPS="1")
    await _cps_window_empty(gather_stack)
    async with (
        falcon.testing.ASGIConductor(create_app(settings)) as one,
        falcon.testing.ASGIConductor(create_app(settings)) as two,
    ):
        first = await one.simulate_post("/v1/calls", json={"to": BUSY}, headers=AUTH)
        second = await two.simulate_post("/v1/calls", json={"to": BUSY}, headers=AUTH)
        assert first.status_code == 202, first.text
        assert second.status_code == 429, second.text
        assert second.headers["Retry-After"] == "1"
        await _cps_window_empty(gather_stack)  # the next second: calls again
        third = await two.simulate_post("/v1/calls", json={"to": BUSY}, headers=AUTH)
        assert third.status_code == 202, third.text


async def test_call_is_recorded_before_twilio_is_asked(gather_stack: Stack) -> None:
    """Twilio takes the call but the edge never hears back (it died, or the connection was cut):
    the record was there before the request, and the call's own callbacks find it again."""
    rdb = redis.asyncio.Redis.from_url(gather_stack.redis_url)
    seen_at_request: list[dict[bytes, bytes]] = []
    asked: list[dict[str, str]] = []

    async def calls_json(request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        asked.append(form)
        call_id = parse_qs(urlsplit(form["Url"]).query)["outbound"][0]
        seen_at_request.append(await rdb.hgetall(keys.outbound_call(call_id)))
        assert request.transport is not None
        request.transport.close()  # no answer reaches the edge
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Calls.json", calls_json)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        settings = _settings(gather_stack, f"http://127.0.0.1:{port}")
        async with falcon.testing.ASGIConductor(create_app(settings)) as edge:
            resp = await edge.simulate_post(
                "/v1/calls", json={"to": PERSON, "context": {"n": 1}}, headers=AUTH
            )
            assert resp.status_code == 502, resp.text
            assert "unreachable" in resp.json["error"]["message"]
            (record,) = seen_at_request
            assert record[b"status"] == b"initiating" and record[b"to"] == PERSON.encode()
            assert json.loads(record[b"context"]) == {"n": 1}
            # Twilio did place it: its status callback (our id in the URL) finds the record.
            (form,) = asked
            assert form["MachineDetection"] == "DetectMessageEnd"
            status_url = form["StatusCallback"]
            sid = "CA" + "5" * 32
            params = {
                "AccountSid": DEMO_ACCOUNT_SID,
                "CallSid": sid,
                "CallStatus": "ringing",
                "Direction": "outbound-api",
                "From": OUR_NUMBER,
                "To": PERSON,
            }
            callback = await edge.simulate_post(
                urlsplit(status_url).path,
                query_string=urlsplit(status_url).query,
                body=urlencode(params),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    SIGNATURE_HEADER: sign(status_url, params, DEMO_AUTH_TOKEN),
                },
            )
            assert callback.status_code == 204, callback.text
            shown = await edge.simulate_get(f"/v1/calls/{sid}", headers=AUTH)
            assert shown.status_code == 200, shown.text
            assert shown.json["status"] == "ringing" and shown.json["to"] == PERSON
    finally:
        await runner.cleanup()
        await rdb.aclose()


def test_outbound_settings_are_checked() -> None:
    base = {
        "PUBLIC_URL": "http://127.0.0.1:1",
        "TWILIO_ACCOUNT_SID": DEMO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": DEMO_AUTH_TOKEN,
    }
    outbound = EdgeSettings.from_env(base).outbound
    assert not outbound.enabled and outbound.amd and outbound.max_cps == 1
    assert outbound.allows("+14155550100") and not outbound.allows("+442071838750")
    assert not outbound.allows("+19765550100")
    listed = EdgeSettings.from_env({**base, "OUTBOUND_ALLOWED_PREFIXES": "+1900,+44"}).outbound
    assert listed.allows("+19005550100") and listed.allows("+442071838750")
    assert not listed.allows("+14155550100")
    for name, value in (
        ("OUTBOUND_FROM", "4155550199"),
        ("OUTBOUND_ALLOWED_PREFIXES", "1,+44"),
        ("OUTBOUND_AMD", "maybe"),
        ("OUTBOUND_MAX_CPS", "0"),
        ("TWILIO_API_BASE_URL", "ftp://x"),
    ):
        with pytest.raises(ConfigError, match=name):
            EdgeSettings.from_env({**base, name: value})


async def test_status_only_moves_forward(gather_stack: Stack) -> None:
    """Twilio's callbacks may come out of order: a late `ringing` never undoes `completed`."""
    client = redis.asyncio.Redis.from_url(gather_stack.redis_url)
    try:
        store = OutboundStore(client)
        record = OutboundRecord("ab" * 12, "initiating", PERSON, OUR_NUMBER)
        assert (await store.begin(record, None, 1000)).outcome == "new"
        await store.placed(record.call_id, "CA" + "7" * 32, "queued")
        for status in ("initiated", "in-progress", "completed", "ringing", "busy"):
            await store.advance(record.call_id, status, duration="")
        kept = await store.by_sid("CA" + "7" * 32)
        assert kept is not None and kept.status == "completed"
        assert await store.advance("cd" * 12, "ringing") is False  # no record: nothing written
        assert await client.exists(keys.outbound_call("cd" * 12)) == 0
    finally:
        await client.aclose()
