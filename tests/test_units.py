"""Pure functions: speech rendering, Botpress ids, signature checks, settings parsing."""

from __future__ import annotations

import pytest

from edge.settings import EdgeSettings
from edge.signature import FormParams, TwilioAuth
from shared.config import ConfigError
from worker.identity import caller_user_id, conversation_id
from worker.settings import WorkerSettings
from worker.speech import markdown_to_speech, render_messages

VECTOR_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+14158675309"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
]


@pytest.mark.parametrize(
    "public,signature",
    [
        ("https://mycompany.com", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("https://mycompany.com:443", "kvajT1Ptam85bY51eRf/AJRuM3w="),
        ("http://mycompany.com:80", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
        ("http://mycompany.com:1234", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
    ],
)
def test_twilio_signature_vectors(public: str, signature: str) -> None:
    auth = TwilioAuth(public, "12345", "AC" + "0" * 32)
    params = FormParams(VECTOR_PARAMS)
    assert auth.is_valid("/myapp.php", "foo=1&bar=2", params, signature)
    assert not auth.is_valid("/myapp.php", "foo=1&bar=3", params, signature)
    assert not auth.is_valid("/myapp.php", "foo=1&bar=2", FormParams(VECTOR_PARAMS[:-1]), signature)


def test_caller_ids_are_valid_botpress_ids() -> None:
    import re

    for number in [
        "+14155550100",
        "client:alice",
        "Anonymous",
        "",
        "sip:bob@example.com",
        "+" + "9" * 80,
    ]:
        uid = caller_user_id(number)
        assert re.fullmatch(r"[a-zA-Z0-9_\-\\/]{1,70}", uid), uid
    assert caller_user_id("+14155550100") == "tel-14155550100"
    assert caller_user_id("client:alice") != caller_user_id("client_alice")
    assert conversation_id("CA" + "a" * 32) == "CA" + "a" * 32


def _msg(payload: dict) -> dict:  # type: ignore[type-arg]
    return {"payload": payload, "isBot": True}


def test_every_payload_type_becomes_speech() -> None:
    speech = render_messages(
        [
            _msg({"type": "text", "text": "Hi there."}),
            _msg(
                {"type": "markdown", "markdown": "# Menu\n- **Pizza** [link](http://x)\n- _Pasta_"}
            ),
            _msg(
                {
                    "type": "choice",
                    "text": "Which size?",
                    "options": [{"label": "Small", "value": "s"}, {"label": "Large", "value": "l"}],
                }
            ),
            _msg({"type": "image", "imageUrl": "http://x/i.png"}),
            _msg(
                {
                    "type": "card",
                    "title": "Margherita",
                    "subtitle": "Tomato and basil",
                    "actions": [
                        {"action": "postback", "label": "Order", "value": "order"},
                        {"action": "url", "label": "Website", "value": "http://x"},
                    ],
                }
            ),
            _msg({"type": "location", "latitude": 1, "longitude": 2, "title": "Our shop"}),
        ]
    )
    assert speech.sentences == [
        "Hi there.",
        "Menu. Pizza link. Pasta.",
        "Which size? You can say Small, or Large.",
        "Margherita. Tomato and basil. You can say Order.",
        "Location: Our shop.",
    ]
    assert speech.options == [("Small", "s"), ("Large", "l"), ("Order", "order")]
    assert not speech.hangup


@pytest.mark.parametrize("text", ["Bye now <hangup/>", "Bye now<HANGUP />", "Bye now < hangup/> x"])
def test_hangup_marker_cuts_and_ends(text: str) -> None:
    speech = render_messages(
        [_msg({"type": "text", "text": text}), _msg({"type": "text", "text": "never spoken"})]
    )
    assert speech.sentences == ["Bye now"]
    assert speech.hangup


def test_markdown_single_line() -> None:
    assert markdown_to_speech("Hello **world**, see `code`") == "Hello world, see code"


BASE_EDGE_ENV = {
    "PUBLIC_URL": "https://voice.example.com/",
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "secret-token",
}


def test_edge_settings_defaults_and_secret_masking() -> None:
    s = EdgeSettings.from_env(BASE_EDGE_ENV)
    assert s.voice_url == "https://voice.example.com/twilio/voice"
    assert s.enabled and s.voice == "Google.en-US-Standard-C" and s.language == "en-US"
    assert s.speech_timeout == "auto"
    assert "secret-token" not in repr(s)


@pytest.mark.parametrize(
    "name,value",
    [
        ("PUBLIC_URL", "voice.example.com"),
        ("TWILIO_ACCOUNT_SID", "nope"),
        ("TIMEOUT", "soon"),
        ("SPEECH_TIMEOUT", "fast"),
        ("ENABLED", "maybe"),
        ("REPLY_DEADLINE_MS", "20000"),
        ("REDIS_URL", "http://x"),
    ],
)
def test_edge_settings_errors_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        EdgeSettings.from_env({**BASE_EDGE_ENV, name: value})


def test_secret_from_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {k: v for k, v in BASE_EDGE_ENV.items() if k != "TWILIO_AUTH_TOKEN"}
    s = EdgeSettings.from_env({**env, "TWILIO_AUTH_TOKEN_FILE": str(token_file)})
    assert s.auth_token.value == "from-file"
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        EdgeSettings.from_env(env)


def test_worker_settings_need_a_bot() -> None:
    with pytest.raises(ConfigError, match="BOTPRESS_WEBHOOK_ID"):
        WorkerSettings.from_env({})
    s = WorkerSettings.from_env({"BOTPRESS_WEBHOOK_ID": "abc-123"})
    assert s.chat_url == "https://chat.botpress.cloud/abc-123"


@pytest.mark.parametrize(
    ("public_url", "socket_url"),
    [
        ("https://voice.example.com", "wss://voice.example.com/twilio/relay"),
        ("https://x.example.com/voicebridge", "wss://x.example.com/voicebridge/twilio/relay"),
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/twilio/relay"),
    ],
)
def test_the_relay_socket_is_on_public_url_like_every_webhook(
    public_url: str, socket_url: str
) -> None:
    s = EdgeSettings.from_env({**BASE_EDGE_ENV, "PUBLIC_URL": public_url})
    assert s.relay_url == socket_url
    assert s.voice_url == f"{public_url}/twilio/voice"
