"""callsim's ConversationRelay mode: TwiML parsing and frame validation (pure), then whole calls
against a real aiohttp server playing the app side (signatures checked with twilio-python's
RequestValidator), and end to end against the real edge in relay mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from callsim.call import CallResult, place_call
from callsim.cli import main as cli_main
from callsim.relay import FrameError, validate_frame
from callsim.script import BargeIn, Dtmf, Script, parse_action
from callsim.twiml import Connect, TwimlError, parse

ACCOUNT_SID = "AC" + "1" * 32
TOKEN = "relay-token"
PUBLIC = "https://voice.example.com"
ROOT = Path(__file__).resolve().parent.parent

# --- TwiML ---------------------------------------------------------------------------------


def test_parse_connect_conversation_relay_keeps_everything() -> None:
    doc = parse(
        '<Response><Connect action="/twilio/relay-action" method="POST">'
        '<ConversationRelay url="wss://voice.example.com/twilio/relay" language="en-US" '
        'ttsProvider="Google" voice="en-US-Journey-O" interruptible="speech" '
        'dtmfDetection="true" partialPrompts="true" welcomeGreeting="Hi">'
        '<Language code="fr-FR" ttsProvider="Amazon" voice="Lea-Neural"/>'
        '<Parameter name="callSid" value="CA1"/><Parameter name="turn" value="3"/>'
        "</ConversationRelay></Connect></Response>"
    )
    (verb,) = doc.verbs
    assert isinstance(verb, Connect)
    assert (verb.action, verb.method) == ("/twilio/relay-action", "POST")
    relay = verb.relay
    assert relay.url == "wss://voice.example.com/twilio/relay"
    assert relay.get("ttsProvider") == "Google" and relay.get("voice") == "en-US-Journey-O"
    assert (relay.interruptible, relay.dtmf_detection, relay.partial_prompts) == (
        "speech",
        True,
        True,
    )
    assert relay.welcome_greeting == "Hi"
    assert relay.parameters == (("callSid", "CA1"), ("turn", "3"))
    assert [lang.code for lang in relay.languages] == ["fr-FR"]
    assert relay.languages[0].get("voice") == "Lea-Neural"


def test_parse_connect_defaults() -> None:
    (verb,) = parse(
        '<Response><Connect><ConversationRelay url="ws://h/r"/></Connect></Response>'
    ).verbs
    assert isinstance(verb, Connect) and verb.action is None
    relay = verb.relay
    assert (relay.language, relay.interruptible, relay.dtmf_detection) == ("en-US", "any", False)
    assert relay.get("interruptible") is None and relay.parameters == ()


@pytest.mark.parametrize(
    "body",
    [
        '<Connect><ConversationRelay url="https://h/r"/></Connect>',
        "<Connect><ConversationRelay/></Connect>",
        '<Connect><ConversationRelay url="ws://h/r" ttsProvider="Acme"/></Connect>',
        '<Connect><ConversationRelay url="ws://h/r" interruptible="sometimes"/></Connect>',
        '<Connect><ConversationRelay url="ws://h/r" dtmfDetection="yes"/></Connect>',
        '<Connect><ConversationRelay url="ws://h/r" language="english"/></Connect>',
        '<Connect><ConversationRelay url="ws://h/r"><Parameter value="x"/>'
        "</ConversationRelay></Connect>",
        '<Connect><ConversationRelay url="ws://h/r"><Language voice="x"/>'
        "</ConversationRelay></Connect>",
        '<Connect><ConversationRelay url="ws://h/r"><Say>hi</Say></ConversationRelay></Connect>',
        '<Connect><Stream url="wss://h/s"/></Connect>',
        "<Connect/>",
        '<Connect><ConversationRelay url="ws://h/r"/><ConversationRelay url="ws://h/r"/></Connect>',
        '<Connect method="PUT"><ConversationRelay url="ws://h/r"/></Connect>',
    ],
)
def test_parse_connect_rejects_what_twilio_rejects(body: str) -> None:
    with pytest.raises(TwimlError):
        parse(f"<Response>{body}</Response>")


def test_script_actions_from_text() -> None:
    assert parse_action("dtmf:12#") == Dtmf("12#")
    assert parse_action("barge:3:stop please") == BargeIn(3, "stop please")
    assert parse_action("just words: fine") == "just words: fine"
    for bad in ("dtmf:", "dtmf:12a", "barge:x:stop", "barge:3:", "barge:²:x"):
        with pytest.raises(ValueError):
            parse_action(bad)


# --- frame validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "text", "token": "Hi", "last": False},
        {"type": "text", "token": "", "last": True, "lang": "en-US"},
        {"type": "text", "token": "x", "last": True, "interruptible": False, "preemptible": True},
        {"type": "play", "source": "https://x/a.mp3", "loop": 2, "preemptible": False},
        {"type": "sendDigits", "digits": "12w#"},
        {"type": "language", "ttsLanguage": "fr-FR"},
        {"type": "language", "transcriptionLanguage": "fr-FR"},
        {"type": "end"},
        {"type": "end", "handoffData": '{"reason": "done"}'},
    ],
)
def test_valid_frames(frame: dict[str, Any]) -> None:
    assert validate_frame(json.dumps(frame)) == frame


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"text"', "not a JSON object"),
        (b'{"type": "text"}', "binary"),
        ('{"token": "x", "last": true}', "unknown type None"),
        ('{"type": "speak", "token": "x"}', "unknown type 'speak'"),
        ('{"type": "text", "last": true}', "missing token"),
        ('{"type": "text", "token": "x"}', "missing last"),
        ('{"type": "text", "token": 5, "last": true}', "token is not a str"),
        ('{"type": "text", "token": "x", "last": "true"}', "last is not a bool"),
        ('{"type": "text", "token": "x", "last": true, "lang": 1}', "lang"),
        ('{"type": "text", "token": "x", "last": true, "interruptible": "any"}', "interruptible"),
        ('{"type": "text", "token": null, "last": true}', "token"),
        ('{"type": "play"}', "missing source"),
        ('{"type": "play", "source": "u", "loop": true}', "loop"),
        ('{"type": "sendDigits", "digits": "12x"}', "digits"),
        ('{"type": "language"}', "neither"),
        ('{"type": "end", "handoffData": {"a": 1}}', "handoffData"),
    ],
)
def test_invalid_frames(raw: str | bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=re.escape(reason)):
        validate_frame(raw)


# --- an app to talk to ---------------------------------------------------------------------

Behaviour = Callable[["Session"], Awaitable[None]]


@dataclass
class Session:
    """One socket the app accepted: what it got, and helpers to answer."""

    ws: web.WebSocketResponse
    setup: dict[str, Any]
    signed: bool
    received: list[dict[str, Any]] = field(default_factory=list)

    async def next_frame(self) -> dict[str, Any] | None:
        """The next frame from callsim (None: the socket closed)."""
        msg = await self.ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        frame: dict[str, Any] = json.loads(msg.data)
        self.received.append(frame)
        return frame

    async def next_of(self, *types: str) -> dict[str, Any] | None:
        while (frame := await self.next_frame()) is not None:
            if frame["type"] in types:
                return frame
        return None

    async def say(self, *tokens: str) -> None:
        for i, token in enumerate(tokens):
            await self.ws.send_json({"type": "text", "token": token, "last": i == len(tokens) - 1})

    async def echo_until_closed(self) -> None:
        while (frame := await self.next_of("prompt", "dtmf")) is not None:
            if frame["type"] == "dtmf":
                await self.say("You pressed ", frame["digit"])
            elif frame["last"]:
                await self.say("You said: ", frame["voicePrompt"])


@dataclass
class App:
    port: int = 0
    relay_attrs: str = ""
    action: Callable[[dict[str, str]], str] = lambda form: "<Response><Hangup/></Response>"
    behaviours: list[Behaviour] = field(default_factory=list)  # one per session, in order
    sessions: list[Session] = field(default_factory=list)
    webhooks: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect_twiml(self) -> str:
        return (
            '<Response><Connect action="/twilio/relay-action">'
            f'<ConversationRelay url="wss://voice.example.com/twilio/relay" {self.relay_attrs}>'
            '<Parameter name="callRef" value="ref-1"/></ConversationRelay></Connect></Response>'
        )

    def forms(self, path: str) -> list[dict[str, str]]:
        return [form for p, form, _ in self.webhooks if p == path]


async def _greet_and_echo(s: Session) -> None:
    await s.say("Hello", ", how can", " I help?")
    await s.echo_until_closed()


def _make_app(app: App) -> web.Application:
    validator = RequestValidator(TOKEN)

    async def webhook(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        signed = validator.validate(
            PUBLIC + request.path_qs, form, request.headers.get("X-Twilio-Signature", "")
        )
        app.webhooks.append((request.path, form, signed))
        if request.path == "/twilio/voice":
            body = app.connect_twiml()
        elif request.path == "/twilio/relay-action":
            body = app.action(form)
        else:
            return web.Response(status=204)
        return web.Response(text=body, content_type="application/xml")

    async def relay(request: web.Request) -> web.WebSocketResponse:
        signature = request.headers.get("X-Twilio-Signature", "")
        signed = validator.validate("wss://voice.example.com/twilio/relay", {}, signature)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive_json()
        session = Session(ws, first, signed)
        app.sessions.append(session)
        behaviour = app.behaviours[len(app.sessions) - 1] if app.behaviours else _greet_and_echo
        await behaviour(session)
        await ws.close()
        return ws

    web_app = web.Application()
    web_app.router.add_post("/twilio/voice", webhook)
    web_app.router.add_post("/twilio/relay-action", webhook)
    web_app.router.add_post("/twilio/status", webhook)
    web_app.router.add_get("/twilio/relay", relay)
    return web_app


@pytest.fixture
async def app() -> AsyncIterator[App]:
    state = App()
    runner = web.AppRunner(_make_app(state), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state
    await runner.cleanup()


async def relay_call(app: App, caller: Any, **kwargs: Any) -> CallResult:
    async with aiohttp.ClientSession() as client:
        return await place_call(
            client,
            app.url + "/twilio/voice",
            account_sid=ACCOUNT_SID,
            auth_token=TOKEN,
            caller=caller,
            signing_base=PUBLIC,
            status_url="/twilio/status",
            **kwargs,
        )


def assert_clean(result: CallResult) -> None:
    assert result.relay is not None
    assert result.relay.protocol_errors == []
    assert result.relay.tokens_after_interrupt == 0


# --- whole calls ---------------------------------------------------------------------------


async def test_relay_call_setup_talk_cycles_and_completed_action(app: App) -> None:
    result = await relay_call(app, ["what time is it", "thanks"], call_sid="CA" + "a" * 32)
    assert result.outcome == "caller_hung_up", result.transcript
    assert_clean(result)
    assert result.bot_said() == [
        "Hello, how can I help?",
        "You said: what time is it",
        "You said: thanks",
    ]
    (session,) = app.sessions
    assert session.signed
    setup = session.setup
    assert re.fullmatch(r"VX[0-9a-f]{32}", setup["sessionId"])
    assert setup["callSid"] == "CA" + "a" * 32 and setup["accountSid"] == ACCOUNT_SID
    assert setup["customParameters"] == {"callRef": "ref-1"}
    for name in ("parentCallSid", "forwardedFrom", "callerName", "callType", "callStatus"):
        assert isinstance(setup[name], str)
    assert (setup["from"], setup["to"], setup["direction"]) == (
        "+14155550100",
        "+14155550199",
        "inbound",
    )
    prompts = [f for f in session.received if f["type"] == "prompt"]
    assert prompts == [
        {"type": "prompt", "voicePrompt": "what time is it", "lang": "en-US", "last": True},
        {"type": "prompt", "voicePrompt": "thanks", "lang": "en-US", "last": True},
    ]
    assert result.relay is not None
    cycles = result.relay.cycles
    assert [c.trigger for c in cycles] == ["setup", "prompt", "prompt"]
    (record,) = result.relay.sessions
    assert record.status == "completed" and record.handshake_ms is not None
    for cycle in cycles:
        assert cycle.first_token_ms is not None and cycle.complete_ms is not None
        assert 0 <= cycle.first_token_ms <= cycle.complete_ms
    # The caller hung up: the socket closes, the action hears `completed`, then the status.
    assert [p for p, _, _ in app.webhooks] == [
        "/twilio/voice",
        "/twilio/relay-action",
        "/twilio/status",
    ]
    assert all(signed for _, _, signed in app.webhooks)
    (action,) = app.forms("/twilio/relay-action")
    assert action["SessionStatus"] == "completed" and action["CallStatus"] == "completed"
    assert action["SessionId"] == setup["sessionId"]
    assert action["SessionDuration"].isdigit()
    assert "HandoffData" not in action and "ErrorCode" not in action
    assert app.forms("/twilio/status")[0]["CallStatus"] == "completed"


async def test_end_frame_posts_handoff_and_follows_the_answer(app: App) -> None:
    async def end_on_prompt(s: Session) -> None:
        await s.say("Hi")
        await s.next_of("prompt")
        await s.ws.send_json({"type": "end", "handoffData": '{"to": "sales"}'})
        await s.next_frame()  # callsim closes the socket

    app.behaviours = [end_on_prompt]
    app.action = lambda form: "<Response><Say>Transferring.</Say><Hangup/></Response>"
    result = await relay_call(app, ["sales please", "never said"])
    assert result.outcome == "hangup_by_app", result.transcript
    assert_clean(result)
    assert result.bot_said() == ["Hi", "Transferring."]
    (action,) = app.forms("/twilio/relay-action")
    assert (action["SessionStatus"], action["CallStatus"]) == ("ended", "in-progress")
    assert action["HandoffData"] == '{"to": "sales"}'
    assert {"AccountSid", "CallSid", "From", "To", "Direction"} <= set(action)


async def test_dead_socket_fails_the_session_and_a_new_connect_resumes(app: App) -> None:
    async def die_after_prompt(s: Session) -> None:
        await s.say("Hello")
        await s.next_of("prompt")  # the edge process dies holding the turn

    async def resume(s: Session) -> None:
        await s.say("You said: ", "first")  # the reply the caller still waits for
        await s.echo_until_closed()

    app.behaviours = [die_after_prompt, resume]
    app.action = lambda form: (
        app.connect_twiml() if form["SessionStatus"] == "failed" else "<Response/>"
    )
    result = await relay_call(app, ["first", "second"])
    assert result.outcome == "caller_hung_up", result.transcript
    assert_clean(result)
    assert result.bot_said() == ["Hello", "You said: first", "You said: second"]
    failed, completed = app.forms("/twilio/relay-action")
    assert failed["SessionStatus"] == "failed" and failed["CallStatus"] == "in-progress"
    assert failed["ErrorCode"] == "39001"
    assert failed["ErrorMessage"] == "Network connection to WebSocket server failed"
    assert completed["SessionStatus"] == "completed"
    one, two = app.sessions
    assert one.setup["callSid"] == two.setup["callSid"]
    assert one.setup["sessionId"] != two.setup["sessionId"] == completed["SessionId"]
    assert [f["voicePrompt"] for f in two.received if f["type"] == "prompt"] == ["second"]
    assert result.relay is not None
    assert [s.status for s in result.relay.sessions] == ["failed", "completed"]
    # The resumed reply is timed from the prompt spoken to the dead session.
    resumed = result.relay.cycles[1]
    assert resumed.trigger == "prompt" and resumed.session_id == two.setup["sessionId"]


async def test_hold_phrase_is_not_the_answer_the_caller_waits_on(app: App) -> None:
    answered = asyncio.Event()

    async def slow_bot(s: Session) -> None:
        await s.say("Hi")
        await s.next_of("prompt")
        await s.say("One moment ", "please.")
        # The caller must not speak over the wait: nothing comes until we answer.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                frame = await s.next_of("prompt", "dtmf")
                assert frame is None, f"the caller spoke during the hold: {frame}"
        await s.say("The answer.")
        answered.set()
        await s.echo_until_closed()

    app.behaviours = [slow_bot]
    result = await relay_call(app, ["question", "next"])
    assert result.outcome == "caller_hung_up", result.transcript
    assert_clean(result)
    (session,) = app.sessions
    assert answered.is_set()
    assert [f["voicePrompt"] for f in session.received if f["type"] == "prompt"] == [
        "question",
        "next",
    ]
    assert result.relay is not None
    hold, answer = result.relay.cycles[1:3]
    assert (hold.text, answer.text) == ("One moment please.", "The answer.")
    assert hold.started_at == answer.started_at  # both timed from "question"
    assert result.bot_said()[-1] == "You said: next"
    # And the frame order proves it: "next" came after "The answer." was sent.
    assert session.received[-1] == {
        "type": "prompt",
        "voicePrompt": "next",
        "lang": "en-US",
        "last": True,
    }


async def test_unreachable_socket_is_a_failed_session(app: App) -> None:
    app.relay_attrs = ""
    app.connect_twiml = lambda: (  # type: ignore[method-assign]
        '<Response><Connect action="/twilio/relay-action">'
        '<ConversationRelay url="wss://voice.example.com/twilio/nowhere"/></Connect></Response>'
    )
    result = await relay_call(app, ["hello"])
    assert result.outcome == "hangup_by_app"
    (action,) = app.forms("/twilio/relay-action")
    assert (action["SessionStatus"], action["ErrorCode"]) == ("failed", "39001")


async def test_invalid_frames_are_protocol_errors_and_ten_close_1007(app: App) -> None:
    close_code: list[int | None] = []

    async def sloppy(s: Session) -> None:
        await s.ws.send_str("not json")
        await s.ws.send_json({"type": "text", "token": "Hi"})  # no last
        await s.say("Hello")
        await s.next_of("prompt")
        for _ in range(10):
            await s.ws.send_json({"type": "speak", "text": "x"})
        while await s.next_frame() is not None:
            pass
        close_code.append(s.ws.close_code)

    app.behaviours = [sloppy]
    result = await relay_call(app, ["hi", "unreached"])
    assert result.relay is not None
    reasons = [e.reason for e in result.relay.protocol_errors]
    assert reasons[:2] == ["not JSON", "text: missing last"]
    assert len(reasons) == 12
    (session,) = app.sessions
    errors = [f for f in session.received if f["type"] == "error"]
    assert len(errors) == 12 and errors[0]["description"].startswith("Invalid message received")
    assert close_code == [1007]
    (action,) = app.forms("/twilio/relay-action")
    assert (action["SessionStatus"], action["ErrorCode"]) == ("failed", "64107")


async def test_barge_in_sends_interrupt_and_counts_tokens_after_it(app: App) -> None:
    async def long_reply(s: Session, obedient: bool) -> None:
        await s.say("Hi")
        await s.next_of("prompt")
        for word in ("Once", " upon", " a", " time"):
            await s.ws.send_json({"type": "text", "token": word, "last": False})
        interrupt = await s.next_of("interrupt")
        assert interrupt is not None
        if not obedient:
            # aiohttp answers the ping behind the interrupt inside receive(): the app has it
            # then, and what it sends after is its own fault.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await s.next_frame()
            await s.ws.send_json({"type": "text", "token": " there", "last": False})
            await s.ws.send_json({"type": "text", "token": " was", "last": True})
        await s.echo_until_closed()

    async def good(s: Session) -> None:
        await long_reply(s, obedient=True)

    app.behaviours = [good]
    result = await relay_call(app, ["tell me a story", BargeIn(2, "stop", speak_s=0.5)])
    assert result.outcome == "caller_hung_up", result.transcript
    assert_clean(result)
    assert result.relay is not None and result.relay.interrupts == 1
    story = result.relay.cycles[1]
    assert story.interrupted and story.last_at is None and story.text.startswith("Once upon")
    (session,) = app.sessions
    (interrupt,) = [f for f in session.received if f["type"] == "interrupt"]
    assert interrupt["utteranceUntilInterrupt"] == story.text
    assert isinstance(interrupt["durationUntilInterruptMs"], int)
    assert result.bot_said()[-1] == "You said: stop"
    assert [c.trigger for c in result.relay.cycles] == ["setup", "prompt", "barge_in"]

    async def bad(s: Session) -> None:
        await long_reply(s, obedient=False)

    app.sessions.clear()
    app.behaviours = [bad]
    result = await relay_call(app, ["tell me a story", BargeIn(2, "stop", speak_s=0.5)])
    assert result.relay is not None and result.relay.tokens_after_interrupt == 2
    assert result.relay.tokens_in_flight_at_interrupt == 0


async def test_dtmf_partial_prompts_and_silence(app: App) -> None:
    async def reprompting(s: Session) -> None:
        await s.say("Hi")
        reprompted = False
        while True:
            try:
                async with asyncio.timeout(None if reprompted else 0.3):
                    frame = await s.next_of("prompt", "dtmf")
            except TimeoutError:
                await s.say("Still there?")  # the app's silence timer (once)
                reprompted = True
                continue
            if frame is None:
                return
            if frame["type"] == "dtmf":
                await s.say("Key ", frame["digit"])
            elif frame["last"]:
                await s.say("Heard ", frame["voicePrompt"])

    app.relay_attrs = 'dtmfDetection="true" partialPrompts="true" language="en-GB"'
    app.behaviours = [reprompting]
    result = await relay_call(app, [Dtmf("1"), "two words", None])
    assert result.outcome == "caller_hung_up", result.transcript
    assert_clean(result)
    (session,) = app.sessions
    sent = [f for f in session.received if f["type"] in ("dtmf", "prompt")]
    assert sent == [
        {"type": "dtmf", "digit": "1"},
        {"type": "prompt", "voicePrompt": "two", "lang": "en-GB", "last": False},
        {"type": "prompt", "voicePrompt": "two words", "lang": "en-GB", "last": True},
    ]
    assert result.relay is not None
    assert [c.trigger for c in result.relay.cycles] == ["setup", "dtmf", "prompt", "silence"]
    assert result.bot_said()[-1] == "Still there?"


async def test_no_dtmf_frames_without_dtmf_detection(app: App) -> None:
    async def no_reprompt(s: Session) -> None:
        await s.say("Hi")
        await s.next_of("prompt", "dtmf")  # returns when the caller gives up and hangs up

    app.behaviours = [no_reprompt]
    result = await relay_call(app, [Dtmf("5")], webhook_timeout_s=0.5)
    assert result.outcome == "error" and result.error == "no reply within 0.5 s"
    (session,) = app.sessions
    assert [f["type"] for f in session.received] == []  # Twilio reported no keys


async def test_cli_relay_call_streams_tokens(app: App) -> None:
    app.relay_attrs = 'dtmfDetection="true"'
    out = _Capture()
    argv = [
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
        "dtmf:9",
    ]
    code = await asyncio.to_thread(cli_main, argv, out)
    text = out.getvalue()
    assert code == 0, text
    assert "Bot: Hello, how can I help?\n" in text
    assert "You: hello\nBot: You said: hello\n" in text
    assert "You: (press 9)\nBot: You pressed 9\n" in text
    assert "0 protocol errors, 0 tokens after interrupt" in text


class _Capture:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return "".join(self.parts)


def test_script_peek_and_skip() -> None:
    script = Script(["a", "barge:1:b"])
    assert script.peek() == "a"
    script.skip()
    assert script.peek() == BargeIn(1, "b")


# --- end to end: the real edge in relay mode -----------------------------------------------

EDGE_HAS_RELAY = "/twilio/relay" in (ROOT / "edge" / "app.py").read_text(encoding="utf-8")
needs_edge_relay = pytest.mark.skipif(
    not EDGE_HAS_RELAY, reason="the edge has no /twilio/relay route yet (edge/app.py)"
)


@pytest.fixture(scope="module")
def relay_stack() -> Any:
    from devstack.stack import StackConfig
    from tests.helpers import start_stack

    stack = start_stack(
        StackConfig(
            workers=1,
            edge_env={"VOICE_MODE": "relay", "TIMEOUT": "1", "MAX_SILENT_TURNS": "3"},
            worker_env={"BOT_QUIET_MS": "100"},
        )
    )
    yield stack
    stack.stop()


@needs_edge_relay
async def test_e2e_relay_call_through_the_edge(relay_stack: Any) -> None:
    from edge.settings import DEFAULT_REPROMPT
    from tests.helpers import call

    result = await call(relay_stack, ["hello there", None, "dtmf:42#", "bye"])
    assert result.relay is not None, result.transcript
    assert_clean(result)
    assert result.relay.errors == []
    transcript = "\n".join(map(str, result.transcript))
    assert [s.status for s in result.relay.sessions] == ["ended"], transcript
    triggers = [c.trigger for c in result.relay.cycles]
    assert triggers == ["setup", "prompt", "silence", "dtmf", "prompt"], transcript
    said = result.bot_said()
    assert "hello there" in said[1].lower()
    assert said[2] == DEFAULT_REPROMPT
    for cycle in result.relay.cycles:
        assert cycle.complete_ms is not None and not cycle.interrupted
    # The echo bot hangs up on "bye": `end`, the action, <Hangup/>; then the status callback.
    assert result.outcome == "hangup_by_app", result.transcript
    kinds = [(w.kind, w.error) for w in result.webhooks]
    assert kinds == [("start", None), ("relay_action", None), ("status", None)]
    assert result.webhooks[1].params["SessionStatus"] == "ended"


# --- load mode -----------------------------------------------------------------------------


def _load_config(app: App, **kwargs: Any) -> Any:
    from callsim.load import LoadConfig

    base: dict[str, Any] = dict(
        url=app.url + "/twilio/voice",
        account_sid=ACCOUNT_SID,
        auth_token=TOKEN,
        public_url=PUBLIC,
        status_url="/twilio/status",
        think_time_s=0.0,
    )
    return LoadConfig(**{**base, **kwargs})


async def test_load_relay_sessions_report_talk_cycles(app: App) -> None:
    from callsim.load import run_load

    report = await run_load(_load_config(app, calls=3, ramp_up_s=0.05, script=("hi", "again")))
    assert report.call_outcomes == {"caller_hung_up": 3}
    relay = report.relay
    assert relay is not None
    assert relay["cycles"] == 9 and relay["triggers"] == {"setup": 3, "prompt": 6}
    assert relay["first_token_ms"]["count"] == 9 and relay["cycle_end_ms"]["count"] == 9
    assert relay["cycle_end_ms"]["p50"] >= relay["first_token_ms"]["p50"] > 0
    assert relay["sessions"] == {"completed": 3}
    assert (relay["protocol_errors"], relay["tokens_after_interrupt"]) == (0, 0)
    assert report.broken() == 0
    assert len({s.setup["from"] for s in app.sessions}) == 3  # one caller number per call


async def test_load_counts_protocol_errors_as_broken(app: App) -> None:
    from callsim.load import run_load

    async def sloppy(s: Session) -> None:
        await s.ws.send_json({"type": "text", "token": "Hi", "last": "yes"})
        await s.say("Hi")
        await s.echo_until_closed()

    app.behaviours = [sloppy, sloppy]
    report = await run_load(_load_config(app, calls=2, script=("hi",)))
    assert report.relay is not None and report.relay["protocol_errors"] == 2
    assert report.relay["protocol_error_reasons"] == {"text: last is not a bool: 'yes'": 2}
    assert report.broken() == 2


async def test_load_cli_relay_table_json_and_plot(app: App, tmp_path: Path) -> None:
    out = _Capture()
    argv = [
        "load",
        "--url",
        app.url + "/twilio/voice",
        "--account-sid",
        ACCOUNT_SID,
        "--auth-token",
        TOKEN,
        "--public-url",
        PUBLIC,
        "--calls",
        "2",
        "--think-time-s",
        "0",
        "--say",
        "hi",
        "--say",
        "barge:1:stop",
        "--report",
        str(tmp_path / "r.json"),
        "--plot",
        str(tmp_path / "p.png"),
        "--quiet",
    ]
    code = await asyncio.to_thread(cli_main, argv, out)
    text = out.getvalue()
    assert code == 0, text
    assert "end of talk cycle" in text and "tokens after interrupt" in text
    data = json.loads((tmp_path / "r.json").read_text())
    relay = data["relay"]
    assert relay["cycles"] >= 6 and relay["sessions"] == {"completed": 2}
    assert relay["protocol_errors"] == 0 and relay["tokens_after_interrupt"] == 0
    assert relay["interrupts"] + relay["barge_ins_missed"] == 2
    assert data["hdr"]["relay_first_token_us"] and data["hdr"]["relay_cycle_end_us"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_config_rejects_a_mistyped_step() -> None:
    from callsim.load import LoadConfig

    with pytest.raises(ValueError, match="barge"):
        LoadConfig(url="http://127.0.0.1:1/", account_sid="AC", auth_token="t", script=("barge:",))


@needs_edge_relay
async def test_e2e_relay_load_through_the_edge(relay_stack: Any) -> None:
    from callsim.load import LoadConfig, run_load

    report = await run_load(
        LoadConfig(
            url=f"{relay_stack.edge_url}/twilio/voice",
            account_sid=relay_stack.config.account_sid,
            auth_token=relay_stack.config.auth_token,
            public_url=relay_stack.public_url,
            status_url="/twilio/status",
            calls=3,
            ramp_up_s=0.2,
            think_time_s=0.05,
            script=("hello", "barge:1:what now", "bye"),
        )
    )
    relay = report.relay
    assert relay is not None, report
    assert report.call_outcomes == {"hangup_by_app": 3}, report
    assert relay["sessions"] == {"ended": 3}, relay
    assert (relay["protocol_errors"], relay["tokens_after_interrupt"]) == (0, 0), relay
    assert relay["errors"] == {}
    # Each call: the greeting, "hello", "what now" (cut in or after), "bye".
    assert relay["cycles"] == 12 and relay["first_token_ms"]["count"] == 12
    assert relay["interrupts"] + relay["barge_ins_missed"] == 3
    assert report.broken() == 0
