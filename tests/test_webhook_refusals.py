"""Bad input gets a clear HTTP error and writes nothing to Redis."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
import redis

from callsim.signing import sign
from devstack.stack import Stack
from shared import keys
from tests.helpers import Response, fetch


def _form(stack: Stack, **overrides: str) -> dict[str, str]:
    form = {
        "CallSid": "CA" + "1" * 32,
        "AccountSid": stack.config.account_sid,
        "From": "+14155550100",
        "To": "+14155550199",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def _post(
    stack: Stack,
    path: str,
    form: dict[str, str],
    *,
    token: str | None = None,
    signature: str | None = None,
    body: bytes | None = None,
    content_type: str = "application/x-www-form-urlencoded",
) -> Response:
    url = f"{stack.public_url}{path}"
    sig = signature if signature is not None else sign(url, form, token or stack.config.auth_token)
    return fetch(
        f"{stack.edge_url}{path}",
        method="POST",
        body=body if body is not None else urlencode(form).encode(),
        headers={"X-Twilio-Signature": sig, "Content-Type": content_type},
        timeout_s=10,
    )


def _stream_len(rdb: redis.Redis) -> int:
    return int(rdb.xlen(keys.TURN_STREAM)) if rdb.exists(keys.TURN_STREAM) else 0


@pytest.mark.parametrize(
    "case,expected",
    [
        ("bad_signature", 403),
        ("wrong_token", 403),
        ("no_signature", 403),
        ("wrong_account", 403),
        ("missing_call_sid", 400),
        ("bad_call_sid", 400),
        ("too_large", 413),
        ("json_body", 415),
    ],
)
def test_refused_before_anything_is_written(
    stack: Stack, rdb: redis.Redis, case: str, expected: int
) -> None:
    before = _stream_len(rdb)
    form = _form(stack)
    kwargs: dict[str, object] = {}
    if case == "bad_signature":
        kwargs["signature"] = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    elif case == "wrong_token":
        kwargs["token"] = "not-the-token"
    elif case == "no_signature":
        kwargs["signature"] = ""
    elif case == "wrong_account":
        form = _form(stack, AccountSid="AC" + "f" * 32)
    elif case == "missing_call_sid":
        form = _form(stack, CallSid=None)  # type: ignore[arg-type]
    elif case == "bad_call_sid":
        form = _form(stack, CallSid="CA'; DROP")
    elif case == "too_large":
        form = _form(stack, Padding="x" * 40000)
    elif case == "json_body":
        kwargs["body"] = b'{"CallSid": "CA1"}'
        kwargs["content_type"] = "application/json"
    resp = _post(stack, "/twilio/voice", form, **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == expected, resp.text
    assert _stream_len(rdb) == before
    assert rdb.exists(keys.turn_mark(form.get("CallSid", "none"), 0)) == 0


def test_signature_is_checked_against_public_url_not_host_header(stack: Stack) -> None:
    form = _form(stack, CallSid="CA" + "2" * 32)
    # Signed for the URL the edge sees instead of PUBLIC_URL's: refused only if they differ,
    # so sign for another public host to prove the Host header is not used.
    sig = sign("https://attacker.example.com/twilio/voice", form, stack.config.auth_token)
    resp = fetch(
        f"{stack.edge_url}/twilio/voice",
        method="POST",
        body=urlencode(form).encode(),
        timeout_s=10,
        headers={
            "X-Twilio-Signature": sig,
            "Host": "attacker.example.com",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert resp.status_code == 403


def test_gather_with_bad_turn_is_400(stack: Stack, rdb: redis.Redis) -> None:
    before = _stream_len(rdb)
    form = _form(stack, SpeechResult="hello", CallStatus="in-progress")
    resp = _post(stack, "/twilio/gather?turn=abc&silent=0", form)
    assert resp.status_code == 400
    assert _stream_len(rdb) == before


def test_status_callback_ignores_non_final_status(stack: Stack, rdb: redis.Redis) -> None:
    before = _stream_len(rdb)
    resp = _post(stack, "/twilio/status", _form(stack, CallStatus="in-progress"))
    assert resp.status_code == 204
    assert _stream_len(rdb) == before


def test_twilio_retry_of_the_same_turn_is_one_turn(stack: Stack, rdb: redis.Redis) -> None:
    sid = "CA" + "3" * 32
    form = _form(stack, CallSid=sid)
    before = _stream_len(rdb)
    first = _post(stack, "/twilio/voice", form)
    second = _post(stack, "/twilio/voice", form)
    assert first.status_code == second.status_code == 200
    assert _stream_len(rdb) == before + 1
