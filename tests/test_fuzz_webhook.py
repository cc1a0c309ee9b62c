"""Property-based tests of the webhook edge (hypothesis).

End to end: random forms, encodings (invalid UTF-8, percent-escapes, repeated fields, huge
fields, empty and chunked bodies), content types, query strings and signatures (none, random,
valid for another URL, valid) at the real edge under gunicorn. Never a 5xx, never a connection
error, a 200 is always TwiML, an unsigned request is always refused, and a refused request
writes nothing: the stream's length and the call's `vb:turn:{CallSid}:*` marks are unchanged.

Unit level: edge.signature.TwilioAuth / FormParams agree with twilio's RequestValidator and with
callsim.signing.sign, repeated parameters and ports included, and any mutation that changes what
is signed invalidates the signature.
"""

from __future__ import annotations

import re
import string
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
import redis
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from yarl import URL

from callsim import twiml
from callsim.signing import sign, signing_string
from devstack.stack import Stack, StackConfig
from edge.signature import FormParams, TwilioAuth
from shared import keys
from tests.helpers import start_stack

E2E = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
UNIT = settings(max_examples=300, deadline=None)

FORM_TYPE = "application/x-www-form-urlencoded"
OTHER_ACCOUNT = "AC" + "f" * 32
# Weighted towards the webhooks, so most requests get as far as the signature check and beyond.
PATHS = (
    ("/twilio/voice",) * 4
    + ("/twilio/gather",) * 4
    + ("/twilio/status",) * 2
    + (
        "/twilio",
        "/",
        "/readyz",
        "/twilio/voice/",
    )
)
TWILIO_FIELDS = (
    "CallSid", "AccountSid", "From", "To", "CallStatus", "Direction", "SpeechResult",
    "Confidence", "Digits", "ApiVersion", "Caller", "Called",
)  # fmt: skip
# Percent-escapes, valid and not: invalid UTF-8 (ff, fe, C3 28, a cut-off E2 82), NUL, a lone
# "%" and "%zz", and unicode digits that str.isdigit() accepts but int() may not: "%C2%B2"
# (superscript two, once a 500) and "%D9%A3" (Arabic-Indic three).
ESCAPES = (
    "%ff", "%fe", "%00", "%C3%28", "%e2%82", "%", "%zz", "%41", "%2B", "%26", "%3D", "+",
    "%C2%B2", "%D9%A3",
)  # fmt: skip
# Characters that need no escaping in a query: what is signed is what the edge sees.
QUERY_CHARS = string.ascii_letters + string.digits + "-._~=&"
HOSTS = (None, "attacker.example.com", "127.0.0.1", "")


# -- the stack --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_stack() -> Iterator[Stack]:
    """A stack of our own: fuzzed turns for calls that never started must not slow the shared
    one (a worker waits for the previous turn of a call up to the bot timeout)."""
    s = start_stack(
        StackConfig(
            workers=1,
            edge_env={"REPLY_DEADLINE_MS": "300"},
            worker_env={"BOT_TIMEOUT_MS": "1000", "BOT_QUIET_MS": "50"},
        )
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def fuzz_rdb(fuzz_stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(fuzz_stack.redis_url)
    yield client
    client.close()


@pytest.fixture()
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def _send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | AsyncIterator[bytes],
    headers: dict[str, str],
) -> tuple[int, str]:
    """The request exactly as given: the URL as written (escapes, valid or not, reach the edge
    untouched) and no Content-Type unless in `headers`. Returns the status and the body."""
    async with http.request(
        method,
        URL(url, encoded=True),
        data=body,
        headers=headers,
        skip_auto_headers=("Content-Type",),
        allow_redirects=False,
    ) as resp:
        return resp.status, await resp.text(errors="replace")


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    yield body  # an async iterable body goes out with Transfer-Encoding: chunked


# -- strategies --------------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
call_sids = st.one_of(
    st.binary(min_size=16, max_size=16).map(lambda b: "CA" + b.hex()),  # fresh, valid
    st.sampled_from(["", "CA", "CA'; DROP", "CA*", "CA[1]", "CA" + "1" * 70, "CAé1", "CA\x00"]),
    texts,
)
field_names = st.one_of(st.sampled_from(TWILIO_FIELDS), texts)


@dataclass
class Fuzzed:
    method: str
    path: str
    query: str
    body: bytes
    chunked: bool
    content_type: str | None
    signature: str  # "none", "random", "other_url", "valid"
    random_signature: str
    host: str | None
    call_sid: str

    def url_path(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


@st.composite
def queries(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["none", "turn", "turn", "turn", "random", "escapes"]))
    if kind == "none":
        return ""
    if kind == "turn":
        turn = draw(st.integers(-2, 10**7))
        silent = draw(st.one_of(st.none(), st.integers(-1, 30)))
        return f"turn={turn}" + ("" if silent is None else f"&silent={silent}")
    if kind == "random":
        return draw(st.text(QUERY_CHARS, max_size=60))
    parts = draw(st.lists(st.sampled_from([*ESCAPES, "turn=", "silent=", "&", "1", "x"]),
                          max_size=12))  # fmt: skip
    return "".join(parts)


@st.composite
def bodies(draw: st.DrawFn, call_sid: str, account_sid: str, well_formed: bool = False) -> bytes:
    kinds = ["form"] if well_formed else ["form", "raw", "escapes", "huge", "empty", "many"]
    kind = draw(st.sampled_from(kinds))
    base = [("CallSid", call_sid), ("AccountSid", account_sid), ("From", "+14155550100"),
            ("To", "+14155550199"), ("CallStatus", draw(st.sampled_from(
                ["ringing", "in-progress", "completed", "busy", ""])))]  # fmt: skip
    if draw(st.booleans()):
        base.append(("SpeechResult", draw(texts)))
    extra = draw(st.lists(st.tuples(field_names, texts), max_size=8))  # repeats included
    pairs = draw(st.permutations(base + extra))
    if kind == "form":
        return urlencode(pairs).encode()
    if kind == "raw":
        return draw(st.binary(max_size=400))
    if kind == "escapes":
        junk = "".join(draw(st.lists(st.sampled_from([*ESCAPES, "=", "&", "a"]), max_size=20)))
        return (urlencode(pairs) + "&" + junk).encode()
    if kind == "huge":
        name = draw(st.sampled_from(["SpeechResult", "Padding", "x" * 100]))
        size = draw(st.integers(1000, 40_000))
        return urlencode([*pairs, (name, "y" * size)]).encode()
    if kind == "many":
        return urlencode(
            pairs + [("f", str(i)) for i in range(draw(st.integers(150, 400)))]
        ).encode()
    return b""


FRESH_SID = st.binary(min_size=16, max_size=16).map(lambda b: "CA" + b.hex())
CONTENT_TYPES = (
    f"{FORM_TYPE}; charset=utf-8", "Application/X-WWW-Form-Urlencoded", "application/json",
    "text/plain", "multipart/form-data; boundary=x", None, "", "*/*",
)  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> Fuzzed:
    """Half the time a well-formed, validly signed webhook with each part swapped for a wild one
    with a small chance (so the accepted paths are fuzzed too); else everything wild."""
    well_formed = draw(st.booleans())

    def part(good: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> Any:
        keep = well_formed and draw(st.sampled_from([True] * 6 + [False]))
        return draw(good if keep else st.one_of(good, wild))

    call_sid = part(FRESH_SID, call_sids)
    account = part(st.just("OURS"), st.just(OTHER_ACCOUNT))
    path = part(st.sampled_from(["/twilio/voice", "/twilio/gather"]), st.sampled_from(PATHS))
    good_query = st.builds(lambda t: f"turn={t}&silent=0", st.integers(1, 50))
    return Fuzzed(
        method=part(st.just("POST"), st.sampled_from(["GET", "PUT", "DELETE"])),
        path=path,
        query=part(good_query, queries()),
        body=part(bodies(call_sid, account, well_formed=True), bodies(call_sid, account)),
        chunked=draw(st.booleans()),
        content_type=part(st.just(FORM_TYPE), st.sampled_from(CONTENT_TYPES)),
        signature=part(st.just("valid"), st.sampled_from(["none", "random", "other_url"])),
        random_signature=draw(st.text(string.ascii_letters + string.digits + "+/=", max_size=40)),
        host=draw(st.sampled_from(HOSTS)),
        call_sid=call_sid,
    )


# -- what the edge wrote ------------------------------------------------------------------------


def _edge_params(body: bytes) -> list[tuple[str, str]]:
    """The form as the edge parses it (what a valid signature covers); [] if it can't."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        return []


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _writes(rdb: redis.Redis, call_sids: set[str]) -> tuple[int, set[bytes]]:
    xlen = int(rdb.xlen(keys.TURN_STREAM))
    marks: set[bytes] = set()
    for sid in call_sids:
        marks.update(rdb.keys(keys.turn_mark(_glob_escape(sid), "*")))  # type: ignore[arg-type]
    return xlen, marks


# -- end to end ---------------------------------------------------------------------------------


@E2E
@given(fuzzed=requests())
async def test_fuzzed_webhooks_never_5xx_and_refusals_write_nothing(
    fuzz_stack: Stack, fuzz_rdb: redis.Redis, http: aiohttp.ClientSession, fuzzed: Fuzzed
) -> None:
    stack = fuzz_stack
    body = fuzzed.body.replace(b"OURS", stack.config.account_sid.encode())
    params = _edge_params(body)
    sids = {fuzzed.call_sid, *(v for k, v in params if k == "CallSid")}
    signed_url = f"{stack.public_url}{fuzzed.url_path()}"
    headers: dict[str, str] = {}
    if fuzzed.content_type is not None:
        headers["Content-Type"] = fuzzed.content_type
    if fuzzed.host is not None:
        headers["Host"] = fuzzed.host
    if fuzzed.signature == "random":
        headers["X-Twilio-Signature"] = fuzzed.random_signature
    elif fuzzed.signature == "other_url":
        other = f"https://other.example.com{fuzzed.url_path()}"
        headers["X-Twilio-Signature"] = sign(other, params, stack.config.auth_token)
    elif fuzzed.signature == "valid":
        headers["X-Twilio-Signature"] = sign(signed_url, params, stack.config.auth_token)
    before = _writes(fuzz_rdb, sids)
    content = _chunks(body) if fuzzed.chunked and body else body
    try:
        status, text = await _send(
            http, fuzzed.method, f"{stack.edge_url}{fuzzed.url_path()}", content, headers
        )
    except aiohttp.ClientError as exc:
        pytest.fail(f"no HTTP response: {type(exc).__name__}: {exc}")
    event(f"{fuzzed.path} {status}")
    assert status < 500, text
    if fuzzed.signature != "valid" and fuzzed.path.startswith("/twilio/"):
        assert status >= 400, f"accepted without a valid signature: {text}"
    if status >= 400:
        assert _writes(fuzz_rdb, sids) == before, f"refused ({status}) but written"
    elif status == 200 and fuzzed.path in ("/twilio/voice", "/twilio/gather"):
        twiml.parse(text)  # raises on anything Twilio would not execute


async def test_gather_turn_with_a_unicode_digit_is_not_a_5xx(
    fuzz_stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A validly signed Gather action with turn=%C2%B2 ("²"): str.isdigit() accepts it, int()
    raises, and the error handler (edge/app.py) repeats the same int() and fails again: 500."""
    stack = fuzz_stack
    form = {"CallSid": "CA" + "b" * 32, "AccountSid": stack.config.account_sid,
            "SpeechResult": "hi"}  # fmt: skip
    path = "/twilio/gather?turn=%C2%B2"
    status, _ = await _send(
        http,
        "POST",
        f"{stack.edge_url}{path}",
        urlencode(form).encode(),
        {
            "Content-Type": FORM_TYPE,
            "X-Twilio-Signature": sign(f"{stack.public_url}{path}", form, stack.config.auth_token),
        },
    )
    assert status < 500


# -- unit level: the signature ---------------------------------------------------------------

TOKEN = "12345"
ACCOUNT = "AC" + "0" * 32
param_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
param_pairs = st.lists(
    st.tuples(st.one_of(st.sampled_from(TWILIO_FIELDS), param_text), param_text), max_size=10
)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int | None  # None: no port in the URL
    path: str
    query: str

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port else "")

    @property
    def url(self) -> str:
        return self.origin + self.path + (f"?{self.query}" if self.query else "")


targets = st.builds(
    Target,
    scheme=st.sampled_from(["https", "http"]),
    host=st.sampled_from(["mycompany.com", "voice.example.com", "127.0.0.1"]),
    port=st.sampled_from([None, 443, 80, 1234, 8080]),
    path=st.sampled_from(["/twilio/voice", "/twilio/gather", "/myapp.php", "/"]),
    query=st.one_of(st.just(""), st.text(QUERY_CHARS, max_size=20), queries()),
)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _edge_accepts(
    target: Target, public_origin: str, pairs: list[tuple[str, str]], sig: str
) -> bool:
    auth = TwilioAuth(public_origin, TOKEN, ACCOUNT)
    return auth.is_valid(target.path, target.query, FormParams(pairs), sig)


def test_twilio_reference_vectors() -> None:
    """twilio-python's own test vectors (docs/architecture.md, "Twilio facts we rely on"),
    through callsim and the edge."""
    params = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"),
              ("From", "+14158675309"), ("To", "+18005551212")]  # fmt: skip
    base = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert sign(base, params, TOKEN) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert sign(base.replace(".com", ".com:443"), params, TOKEN) == "kvajT1Ptam85bY51eRf/AJRuM3w="
    http80 = "http://mycompany.com:80/myapp.php?foo=1&bar=2"
    assert sign(http80, params, TOKEN) == "0ZXoZLH/DfblKGATFgpif+LLRf4="
    http1234 = "http://mycompany.com:1234/myapp.php?foo=1&bar=2"
    assert sign(http1234, params, TOKEN) == "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
    for origin, sig in [
        ("https://mycompany.com", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("https://mycompany.com", "kvajT1Ptam85bY51eRf/AJRuM3w="),  # Twilio signed with :443
        ("https://mycompany.com:443", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("http://mycompany.com", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
        ("http://mycompany.com:1234", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
    ]:
        auth = TwilioAuth(origin, TOKEN, ACCOUNT)
        assert auth.is_valid("/myapp.php", "foo=1&bar=2", FormParams(params), sig), origin


@UNIT
@given(target=targets, pairs=param_pairs)
def test_signed_by_callsim_is_valid_for_the_edge_and_twilio(
    target: Target, pairs: list[tuple[str, str]]
) -> None:
    sig = sign(target.url, pairs, TOKEN)
    form = FormParams(pairs)
    validator = RequestValidator(TOKEN)
    assert validator.compute_signature(target.url, form) == sig
    assert validator.validate(target.url, form, sig)
    assert _edge_accepts(target, target.origin, pairs, sig)
    # A default port in what Twilio signed but not in PUBLIC_URL, or the other way round.
    if target.port in (None, _default_port(target.scheme)):
        for port in ("", f":{_default_port(target.scheme)}"):
            assert _edge_accepts(target, f"{target.scheme}://{target.host}{port}", pairs, sig)
    # The form survives the wire: encoded, parsed back as the edge does, still valid.
    wire = _edge_params(urlencode(pairs).encode())
    assert wire == pairs
    assert _edge_accepts(target, target.origin, wire, sig)


@UNIT
@given(pairs=param_pairs)
def test_form_params_keep_every_value_of_a_repeated_name(pairs: list[tuple[str, str]]) -> None:
    form = FormParams(pairs)
    names = list(dict.fromkeys(n for n, _ in pairs))
    assert list(form) == names and len(form) == len(names)
    for name in names:
        values = [v for n, v in pairs if n == name]
        assert form.getall(name) == values
        assert form.get(name) == form[name] == values[0]
        assert name in form


def _mutations(
    target: Target, pairs: list[tuple[str, str]]
) -> st.SearchStrategy[tuple[str, Target, list[tuple[str, str]]]]:
    options: list[tuple[str, Target, list[tuple[str, str]]]] = [
        ("path", replace(target, path=target.path + "x"), pairs),
        ("query", replace(target, query=target.query + "&z=1"), pairs),
        ("host", replace(target, host="evil.example.com"), pairs),
        ("port", replace(target, port=9999), pairs),
        ("added", target, [*pairs, ("Injected", "1")]),
    ]
    if pairs:
        options.append(("dropped", target, pairs[1:]))
        name, value = pairs[0]
        options.append(("value", target, [(name, value + "1"), *pairs[1:]]))
        options.append(("name", target, [(name + "Z", value), *pairs[1:]]))
    return st.sampled_from(options)


def _signed_strings(target: Target, pairs: list[tuple[str, str]]) -> set[str]:
    """What a signature over this request may cover: RequestValidator also tries the URL
    without its port (any port, not only the default one) and, without one, with the default."""
    default = _default_port(target.scheme)
    ports = {None, target.port or default}
    return {signing_string(replace(target, port=port).url, pairs) for port in ports}


@UNIT
@given(data=st.data(), target=targets, pairs=param_pairs)
def test_any_mutation_of_what_is_signed_invalidates(
    data: st.DataObject, target: Target, pairs: list[tuple[str, str]]
) -> None:
    sig = sign(target.url, pairs, TOKEN)
    what, mutated, mutated_pairs = data.draw(_mutations(target, pairs))
    # Twilio's scheme has no separators ({"a": "bc"} and {"ab": "c"} sign alike) and
    # deduplicates values: skip the rare mutation that leaves the signed string as it was.
    assume(signing_string(target.url, pairs) not in _signed_strings(mutated, mutated_pairs))
    validator = RequestValidator(TOKEN)
    assert not validator.validate(mutated.url, FormParams(mutated_pairs), sig), what
    # The edge receives the mutated path/query/form; its PUBLIC_URL is the origin Twilio used
    # (host and port mutations are the edge being configured for another origin).
    assert not _edge_accepts(mutated, mutated.origin, mutated_pairs, sig), what


@UNIT
@given(target=targets, pairs=param_pairs, flip=st.integers(0, 27))
def test_a_changed_signature_or_token_is_invalid(
    target: Target, pairs: list[tuple[str, str]], flip: int
) -> None:
    sig = sign(target.url, pairs, TOKEN)
    swapped = sig[:flip] + ("A" if sig[flip] != "A" else "B") + sig[flip + 1 :]
    assert not _edge_accepts(target, target.origin, pairs, swapped)
    assert not _edge_accepts(target, target.origin, pairs, sign(target.url, pairs, "other"))
    assert not _edge_accepts(target, target.origin, pairs, "")
    assert not TwilioAuth(target.origin, TOKEN, ACCOUNT).is_our_account(OTHER_ACCOUNT)
