"""ROUTES_FILE: several numbers, several bots, in both voice modes, with the real parts: the
edge under gunicorn, workers, redis-server, botsim serving one bot per webhook id."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from callsim.call import CallResult
from devstack.stack import Stack, StackConfig
from edge.routing import our_number
from edge.settings import DEFAULT_UNAVAILABLE, EdgeSettings
from shared import keys
from shared.config import ConfigError
from shared.routes import DEFAULT_ROUTE
from tests.helpers import call, fetch, start_stack, wait_for
from worker.settings import DEFAULT_FALLBACK, WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
CALLER = "+14155550123"
# Numbers of the shared stack's file: two bots in gather mode, the same two in relay mode, and
# a second number on bot A (same bot: same Botpress user).
A_GATHER, B_GATHER, A_RELAY, B_RELAY, A_AGAIN = (
    "+14155550100",
    "+14155550101",
    "+14155550110",
    "+14155550111",
    "+14155550102",
)
UNLISTED = "+14155550199"
ROUTES = f"""
[default]                      # the environment's bot (botsim's "devstack"), its own voice
voice = "Polly.Joanna"

[numbers."{A_GATHER}"]
botpress_webhook_id = "bot-a"
voice = "Polly.Matthew"

[numbers."{B_GATHER}"]
botpress_webhook_id = "bot-b"
voice = "Polly.Lupe"
language = "es-US"
reprompt_phrase = "Perdón, no le entendí."

[numbers."{A_AGAIN}"]
botpress_webhook_id = "bot-a"
voice = "Polly.Brian"

[numbers."{A_RELAY}"]
botpress_webhook_id = "bot-a"
voice_mode = "relay"
relay_tts_provider = "amazon"
relay_voice = "Matthew"

[numbers."{B_RELAY}"]
botpress_webhook_id = "bot-b"
voice_mode = "relay"
language = "es-US"
relay_tts_provider = "amazon"
relay_voice = "Lupe"
"""
BASE_ENV = {
    "PUBLIC_URL": "https://voice.example.com",
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "t",
    "BOTPRESS_CHAT_URL": "http://127.0.0.1:3100/devstack",
}


@pytest.fixture(scope="module")
def routes_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    path = tmp_path_factory.mktemp("routes") / "routes.toml"
    path.write_text(ROUTES)
    stack = start_stack(
        StackConfig(workers=1, extra_env={"ROUTES_FILE": str(path), "BOT_QUIET_MS": "100"})
    )
    yield stack
    stack.stop()


def _first_twiml(result: CallResult) -> ET.Element:
    assert result.webhooks and result.webhooks[0].status == 200, result
    return ET.fromstring(result.webhooks[0].body)


def _bot_conversations(stack: Stack, webhook_id: str) -> set[str]:
    """The conversations (one per CallSid) botsim's bot `webhook_id` had."""
    base = stack.chat_url.rsplit("/", 1)[0]
    return set(fetch(f"{base}/{webhook_id}/_botsim/turns").json()["conversations"])


# -- the file, parsed by each process's own settings --------------------------------------------
def test_each_route_is_the_environment_with_its_values_over_it(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(ROUTES)
    env = {**BASE_ENV, "ROUTES_FILE": str(path), "BOTPRESS_ENCRYPTION_KEY": "env-bot-secret"}
    edge = EdgeSettings.from_env(env).by_route()
    assert set(edge) == {DEFAULT_ROUTE, A_GATHER, B_GATHER, A_AGAIN, A_RELAY, B_RELAY}
    assert (edge[DEFAULT_ROUTE].voice, edge[DEFAULT_ROUTE].language) == ("Polly.Joanna", "en-US")
    assert (edge[B_GATHER].voice, edge[B_GATHER].language) == ("Polly.Lupe", "es-US")
    assert edge[B_GATHER].reprompt_phrase == "Perdón, no le entendí."
    assert edge[B_RELAY].relay and edge[B_RELAY].relay_tts_provider == "Amazon"
    assert not edge[B_GATHER].relay
    # Process settings are the environment's, whatever the route.
    assert {s.public_url for s in edge.values()} == {"https://voice.example.com"}
    worker = WorkerSettings.from_env(env).by_route()
    assert worker[DEFAULT_ROUTE].chat_url == "http://127.0.0.1:3100/devstack"
    assert worker[DEFAULT_ROUTE].encryption_key.value == "env-bot-secret"
    assert worker[A_GATHER].chat_url == "https://chat.botpress.cloud/bot-a"
    # Another bot never signs with the environment's bot's key.
    assert worker[A_GATHER].encryption_key.value == ""
    # Without a file: one route, the environment.
    plain = EdgeSettings.from_env(BASE_ENV)
    assert plain.by_route() == {DEFAULT_ROUTE: plain}


def test_tables_become_the_variables_lists(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(
        '[numbers."+14155550100"]\n'
        'transfer_targets = { sales = "+14155550123", support = "sip:help@example.com" }\n'
        'voices = { "es-US" = "Polly.Lupe" }\nreply_deadline_ms = 2000\nfinish_on_key = ""\n'
    )
    route = EdgeSettings.from_env({**BASE_ENV, "ROUTES_FILE": str(path)}).by_route()
    settings = route["+14155550100"]
    assert DEFAULT_ROUTE not in route  # no [default]: unlisted numbers have no route
    assert settings.transfer_targets == {"sales": "+14155550123", "support": "sip:help@example.com"}
    assert settings.voices == {"es-US": "Polly.Lupe"}
    assert (settings.reply_deadline_s, settings.finish_on_key) == (2.0, "")


N = '[numbers."+14155550100"]'
BAD_FILES = [  # case, file text (None: no file), the entry named, the problem
    ("unreadable", None, "", "cannot read it"),
    ("bad_toml", "[numbers.\n", "", "not valid TOML"),
    ("not_e164", '[numbers."4155550100"]\nvoice = "V"\n', '[numbers."4155550100"]', "E.164"),
    ("unknown_key", f'{N}\nvoise = "Polly.Lupe"\n', N, "unknown key 'voise'"),
    ("bad_value", f'{N}\nvoice_mode = "loud"\n', N, "VOICE_MODE must be one of gather, relay"),
    ("bad_target", '[default]\ntransfer_targets = { s = "me" }\n', "[default]", "bad entry"),
    ("wrong_type", f"{N}\ntimeout = [5]\n", N, "timeout: want a string, a whole number"),
    ("process_setting", "[default]\nredis_url = 'redis://x'\n", "[default]", "'redis_url'"),
    ("no_routes", "# nothing\n", "", "no routes"),
]


@pytest.mark.parametrize("case,text,entry,problem", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_routes_file_is_refused_naming_the_file_entry_and_problem(
    tmp_path: Path, case: str, text: str | None, entry: str, problem: str
) -> None:
    path = tmp_path / "routes.toml"
    if text is not None:
        path.write_text(text)
    env = {**BASE_ENV, "ROUTES_FILE": str(path)}
    # The file's shape and keys are checked by both; a value by the process that reads it.
    edge_only = case in ("bad_value", "bad_target")
    for parse in (
        (EdgeSettings.from_env,) if edge_only else (EdgeSettings.from_env, WorkerSettings.from_env)
    ):
        with pytest.raises(ConfigError) as err:
            parse(env)
        message = str(err.value)
        assert message.startswith(f"ROUTES_FILE {path}: {entry}"), message
        assert problem in message, message


def _start(role: str, env: dict[str, str]) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", role], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stderr.strip().splitlines()


@pytest.mark.parametrize("role", ["edge", "worker"])
def test_a_bad_routes_file_stops_the_process_with_one_line(tmp_path: Path, role: str) -> None:
    path = tmp_path / "routes.toml"
    env = {"PATH": "/usr/bin:/bin", **BASE_ENV, "ROUTES_FILE": str(path)}
    # A value the process reads, refused by its own settings code.
    bad = "voice_mode = 'loud'" if role == "edge" else "bot_timeout_ms = 5"
    path.write_text(f'{N}\nbotpress_webhook_id = "b"\n{bad}\n')
    code, lines = _start(role, env)
    assert code == 2 and len(lines) == 1, lines
    assert str(path) in lines[0] and N in lines[0], lines[0]
    assert ("VOICE_MODE" if role == "edge" else "BOT_TIMEOUT_MS must be >= 100") in lines[0]
    # A key nobody knows stops both.
    path.write_text(f'{N}\nbotpres_webhook_id = "b"\n')
    code, lines = _start(role, env)
    assert code == 2 and len(lines) == 1, lines
    assert "unknown key 'botpres_webhook_id'" in lines[0], lines[0]


def test_our_number_is_to_inbound_and_from_outbound() -> None:
    assert our_number("+1415555010", "+1999", "inbound") == "+1415555010"
    assert our_number("+1999", "+1415555010", "outbound-api") == "+1415555010"
    assert our_number("+1999", "+1415555010", "outbound-dial") == "+1415555010"


# -- calls --------------------------------------------------------------------------------------
async def test_two_numbers_reach_two_bots_with_their_own_voices_gather(
    routes_stack: Stack,
) -> None:
    a = await call(routes_stack, ["hello a", "bye"], from_number=CALLER, to_number=A_GATHER)
    b = await call(routes_stack, ["hola b", "bye"], from_number=CALLER, to_number=B_GATHER)
    for result, voice, language, words in (
        (a, "Polly.Matthew", "en-US", "hello a"),
        (b, "Polly.Lupe", "es-US", "hola b"),
    ):
        assert result.outcome == "hangup_by_app", result
        say = _first_twiml(result).find("Gather/Say")
        assert say is not None, result.webhooks[0].body
        assert (say.get("voice"), say.get("language")) == (voice, language)
        assert any(words in s for s in result.bot_said()), result.bot_said()
    assert a.call_sid in _bot_conversations(routes_stack, "bot-a")
    assert a.call_sid not in _bot_conversations(routes_stack, "bot-b")
    assert b.call_sid in _bot_conversations(routes_stack, "bot-b")
    assert b.call_sid not in _bot_conversations(routes_stack, "bot-a")


async def test_two_numbers_reach_two_bots_with_their_own_voices_relay(
    routes_stack: Stack,
) -> None:
    a = await call(routes_stack, ["hello a", "bye"], from_number=CALLER, to_number=A_RELAY)
    b = await call(routes_stack, ["hola b", "bye"], from_number=CALLER, to_number=B_RELAY)
    for result, voice, language in ((a, "Matthew", "en-US"), (b, "Lupe", "es-US")):
        relay = _first_twiml(result).find("Connect/ConversationRelay")
        assert relay is not None, result.webhooks[0].body
        assert (relay.get("voice"), relay.get("language")) == (voice, language)
        assert relay.get("ttsProvider") == "Amazon"
        assert result.relay is not None and not result.relay.errors, result.relay
        assert any("Hello" in s for s in result.bot_said()), result.bot_said()
    assert any("hello a" in s for s in a.bot_said()), a.bot_said()
    assert any("hola b" in s for s in b.bot_said()), b.bot_said()
    assert a.call_sid in _bot_conversations(routes_stack, "bot-a")
    assert b.call_sid in _bot_conversations(routes_stack, "bot-b")
    assert not {a.call_sid, b.call_sid} & _bot_conversations(routes_stack, "devstack")


async def test_an_unlisted_number_gets_the_default_route(routes_stack: Stack) -> None:
    result = await call(routes_stack, ["hello", "bye"], from_number=CALLER, to_number=UNLISTED)
    assert result.outcome == "hangup_by_app", result
    say = _first_twiml(result).find("Gather/Say")
    assert say is not None and say.get("voice") == "Polly.Joanna"
    assert result.call_sid in _bot_conversations(routes_stack, "devstack")
    metrics = fetch(f"{routes_stack.edge_url}/metrics").text
    assert 'voicebridge_route_webhooks_total{route="default"}' in metrics, metrics


async def test_one_caller_is_one_botpress_user_per_bot(
    routes_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    caller = "+14155550177"
    user = "tel-" + caller[1:]
    client = redis_for(routes_stack)
    for number in (A_GATHER, B_GATHER, A_AGAIN, UNLISTED):
        result = await call(routes_stack, ["hi", "bye"], from_number=caller, to_number=number)
        assert result.outcome == "hangup_by_app", result
    a_url = f"{routes_stack.chat_url.rsplit('/', 1)[0]}/bot-a"
    b_url = f"{routes_stack.chat_url.rsplit('/', 1)[0]}/bot-b"
    a_key = client.get(keys.caller_key(user, a_url))
    b_key = client.get(keys.caller_key(user, b_url))
    env_key = client.get(keys.caller_key(user))  # the environment's bot: names as before
    assert a_key and b_key and env_key
    assert len({a_key, b_key, env_key}) == 3  # three bots, three Botpress users
    # Two numbers on bot A: one user (A_AGAIN found A_GATHER's key, made none of its own).
    stored = sorted(client.scan_iter(match=f"vb:caller:*{user}"))
    assert len(stored) == 3, stored


# -- refusals -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def split_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """No [default]; the edge knows a number the workers' file does not."""
    folder = tmp_path_factory.mktemp("split")
    known = f'[numbers."{A_GATHER}"]\nbotpress_webhook_id = "bot-a"\nvoice_mode = "gather"\n'
    relay = f'[numbers."{A_RELAY}"]\nbotpress_webhook_id = "bot-a"\n'  # the edge's VOICE_MODE
    unknown = f'[numbers."{B_GATHER}"]\nvoice_mode = "gather"\n'
    (folder / "edge.toml").write_text(known + relay + unknown)
    (folder / "worker.toml").write_text(known + relay)
    stack = start_stack(
        StackConfig(
            workers=1,
            edge_env={"ROUTES_FILE": str(folder / "edge.toml"), "VOICE_MODE": "relay"},
            worker_env={"ROUTES_FILE": str(folder / "worker.toml"), "BOT_QUIET_MS": "100"},
        )
    )
    yield stack
    stack.stop()


async def test_a_number_with_no_route_and_no_default_is_unavailable(
    split_stack: Stack, redis_for: Callable[[Stack], redis.Redis]
) -> None:
    result = await call(split_stack, ["hello"], from_number=CALLER, to_number=UNLISTED)
    root = _first_twiml(result)
    assert [child.tag for child in root] == ["Say", "Hangup"], result.webhooks[0].body
    assert root.findtext("Say") == DEFAULT_UNAVAILABLE
    assert result.outcome == "hangup_by_app" and result.webhooks[0].ended_call, result
    assert not redis_for(split_stack).exists(keys.call_state(result.call_sid))  # nothing written
    # An outbound call is routed by its From (our number): ours, listed, it is answered.
    listed = await call(
        split_stack,
        ["hello", "bye"],
        from_number=A_RELAY,
        to_number=UNLISTED,
        direction="outbound-api",
    )
    assert _first_twiml(listed).find("Connect/ConversationRelay") is not None, listed
    assert any("hello" in s for s in listed.bot_said()), listed.bot_said()


async def test_a_route_the_worker_does_not_know_gets_the_fallback(split_stack: Stack) -> None:
    result = await call(split_stack, ["hello"], from_number=CALLER, to_number=B_GATHER)
    said = result.bot_said()
    assert said and DEFAULT_FALLBACK in said[0], said
    worker = split_stack.workers[0]
    wait_for(lambda: f"route '{B_GATHER}'" in worker.log_tail(200))
    assert worker.alive()
    # The worker goes on answering the routes it knows.
    ok = await call(split_stack, ["hello", "bye"], from_number=CALLER, to_number=A_GATHER)
    assert any("hello" in s for s in ok.bot_said()), ok.bot_said()
