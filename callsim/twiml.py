"""Parse a TwiML document into the verbs callsim knows how to follow.

Parsing is strict where Twilio is strict, so a bridge bug shows up here rather than on a real
phone: the root must be ``<Response>``, verbs are case-sensitive, ``<Gather>`` only nests
``<Say>``/``<Play>``/``<Pause>``, and a verb callsim does not simulate (``<Record>``,
``<Enqueue>``, ...) is an error. ``<Dial>`` is followed with one ``<Number>`` or ``<Sip>`` (a
simulated person answers, is busy or does not answer: callsim.call); tests that bot text is
never TwiML check that no ``<Dial>`` element appears where text was meant: ``&lt;Dial&gt;``
inside a ``<Say>`` is text.

``<Connect>`` is followed with one noun, ``<ConversationRelay>`` (Twilio's streaming voice:
callsim.relay plays its WebSocket side); its attributes are checked where Twilio's values are
enumerated, and every attribute is kept, so a test can assert on what the bridge asked for.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urljoin


class TwimlError(Exception):
    """The document is not TwiML Twilio would execute (Twilio's errors 12100/12200)."""


@dataclass(frozen=True)
class Say:
    text: str
    voice: str | None = None
    language: str | None = None
    loop: int = 1


@dataclass(frozen=True)
class Play:
    url: str
    loop: int = 1


@dataclass(frozen=True)
class Pause:
    length_s: float = 1.0


@dataclass(frozen=True)
class Gather:
    """Only the attributes that change what a caller hears or what Twilio posts back."""

    action: str | None = None
    method: str = "POST"
    # Twilio's default input is dtmf: a <Gather> that forgets input="speech" ignores speech.
    input: tuple[str, ...] = ("dtmf",)
    timeout_s: int = 5
    speech_timeout: str | None = None  # seconds or "auto"; None: same as timeout
    language: str = "en-US"
    hints: tuple[str, ...] = ()
    action_on_empty_result: bool = False
    num_digits: int | None = None
    finish_on_key: str = "#"
    children: tuple[Say | Play | Pause, ...] = ()


@dataclass(frozen=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class Reject:
    reason: str = "rejected"


@dataclass(frozen=True)
class RelayLanguage:
    """A nested ``<Language code ...>``: a language the session may switch to."""

    code: str
    attributes: tuple[tuple[str, str], ...] = ()  # every attribute, code included

    def get(self, name: str, default: str | None = None) -> str | None:
        return dict(self.attributes).get(name, default)


@dataclass(frozen=True)
class ConversationRelay:
    url: str  # ws:// or wss://, exactly as written (it is what the handshake signs)
    attributes: tuple[tuple[str, str], ...] = ()  # every attribute, url included
    parameters: tuple[tuple[str, str], ...] = ()  # <Parameter name value/> → customParameters
    languages: tuple[RelayLanguage, ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        return dict(self.attributes).get(name, default)

    @property
    def language(self) -> str:
        return self.get("language") or "en-US"

    @property
    def tts_language(self) -> str:
        return self.get("ttsLanguage") or self.language

    @property
    def transcription_language(self) -> str:
        return self.get("transcriptionLanguage") or self.language

    @property
    def interruptible(self) -> str:
        """none, dtmf, speech or any (Twilio's booleans mapped: true = any, false = none)."""
        return _INTERRUPTIBLE_ALIASES.get((self.get("interruptible") or "any").lower(), "any")

    @property
    def dtmf_detection(self) -> bool:
        return (self.get("dtmfDetection") or "false").lower() == "true"

    @property
    def partial_prompts(self) -> bool:
        return (self.get("partialPrompts") or "false").lower() == "true"

    @property
    def welcome_greeting(self) -> str | None:
        return self.get("welcomeGreeting") or None


@dataclass(frozen=True)
class Connect:
    """``<Connect action method>``: when the session ends, Twilio requests ``action`` and
    follows its TwiML; without one it goes on with the verb after ``<Connect>``."""

    relay: ConversationRelay
    action: str | None = None
    method: str = "POST"


@dataclass(frozen=True)
class Dial:
    """``<Dial action method timeout>`` with one ``<Number>`` or ``<Sip>`` (or a bare number as
    its text). With ``action``, Twilio posts DialCallStatus there when the dialled leg ends and
    follows that TwiML; without, it goes on with the verb after ``<Dial>``."""

    target: str  # the number (E.164) or SIP URI dialled
    noun: str  # "Number" or "Sip"
    action: str | None = None
    method: str = "POST"
    timeout_s: int = 30


Verb = Say | Play | Pause | Gather | Redirect | Hangup | Reject | Connect | Dial


@dataclass(frozen=True)
class Document:
    verbs: tuple[Verb, ...] = field(default_factory=tuple)


_METHODS = ("GET", "POST")
_INTERRUPTIBLE_ALIASES = {
    "none": "none",
    "dtmf": "dtmf",
    "speech": "speech",
    "any": "any",
    "true": "any",
    "false": "none",
}
# Enumerated <ConversationRelay> attributes (Twilio's docs; twilio-python passes any through).
_RELAY_ENUMS = {
    "ttsProvider": ("google", "amazon", "elevenlabs"),
    "transcriptionProvider": ("deepgram", "google"),
    "interruptible": tuple(_INTERRUPTIBLE_ALIASES),
    "welcomeGreetingInterruptible": tuple(_INTERRUPTIBLE_ALIASES),
    "interruptSensitivity": ("low", "medium", "high"),
}
_RELAY_BOOLS = (
    "dtmfDetection",
    "partialPrompts",
    "preemptible",
    "profanityFilter",
    "reportInputDuringAgentSpeech",
)
_LANGUAGE_CODE = re.compile(r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})*$")
# Google voices carry their locale in the name; Twilio refuses a <Say> whose language differs.
_GOOGLE_VOICE = re.compile(r"^Google\.([a-z]{2,3}-[A-Z]{2})-")


def _int_attr(el: ET.Element, name: str, default: int, minimum: int = 0) -> int:
    raw = el.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TwimlError(f"<{el.tag}> {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise TwimlError(f"<{el.tag}> {name}={raw!r} is below {minimum}")
    return value


def _method(el: ET.Element) -> str:
    method = el.get("method", "POST").upper()
    if method not in _METHODS:
        raise TwimlError(f"<{el.tag}> method={el.get('method')!r} is not GET or POST")
    return method


def _bool_attr(el: ET.Element, name: str) -> bool:
    raw = el.get(name, "false").lower()
    if raw not in ("true", "false"):
        raise TwimlError(f"<{el.tag}> {name}={el.get(name)!r} is not true or false")
    return raw == "true"


def _say(el: ET.Element) -> Say:
    # itertext: SSML children (<break>, <emphasis>, <prosody>...) are spoken, not verbs.
    text = " ".join("".join(el.itertext()).split())
    voice, language = el.get("voice"), el.get("language")
    match = _GOOGLE_VOICE.match(voice or "")
    if match and language and match.group(1).lower() != language.lower():
        raise TwimlError(f"<Say> voice {voice!r} does not speak language {language!r}")
    return Say(text=text, voice=voice, language=language, loop=_int_attr(el, "loop", 1))


def _play(el: ET.Element) -> Play:
    url = (el.text or "").strip()
    if not url and el.get("digits") is None:
        raise TwimlError("<Play> without a URL")
    return Play(url=url, loop=_int_attr(el, "loop", 1))


def _pause(el: ET.Element) -> Pause:
    return Pause(length_s=float(_int_attr(el, "length", 1)))


def _nested(el: ET.Element) -> Say | Play | Pause:
    if el.tag == "Say":
        return _say(el)
    if el.tag == "Play":
        return _play(el)
    if el.tag == "Pause":
        return _pause(el)
    raise TwimlError(f"<{el.tag}> is not allowed inside <Gather>")


def _gather(el: ET.Element) -> Gather:
    inputs = tuple(part for part in el.get("input", "dtmf").split() if part)
    if not inputs or any(part not in ("speech", "dtmf") for part in inputs):
        raise TwimlError(f"<Gather> input={el.get('input')!r} is not speech and/or dtmf")
    speech_timeout = el.get("speechTimeout")
    if speech_timeout is not None and speech_timeout != "auto" and not speech_timeout.isdigit():
        raise TwimlError(f"<Gather> speechTimeout={speech_timeout!r} is not seconds or auto")
    hints = tuple(h.strip() for h in el.get("hints", "").split(",") if h.strip())
    num_digits = el.get("numDigits")
    finish_on_key = el.get("finishOnKey", "#")
    if finish_on_key and (len(finish_on_key) != 1 or finish_on_key not in "0123456789*#"):
        # Twilio's warning 13310: one of 0-9, # and *, or "" for none.
        raise TwimlError(f"<Gather> finishOnKey={finish_on_key!r} is not one key or empty")
    return Gather(
        action=el.get("action") or None,
        method=_method(el),
        input=inputs,
        timeout_s=_int_attr(el, "timeout", 5),
        speech_timeout=speech_timeout,
        language=el.get("language", "en-US"),
        hints=hints,
        action_on_empty_result=_bool_attr(el, "actionOnEmptyResult"),
        num_digits=None if num_digits is None else _int_attr(el, "numDigits", 1, minimum=1),
        finish_on_key=finish_on_key,
        children=tuple(_nested(child) for child in el),
    )


def _redirect(el: ET.Element) -> Redirect:
    url = (el.text or "").strip()
    if not url:
        raise TwimlError("<Redirect> without a URL")
    return Redirect(url=url, method=_method(el))


def _check_enum(tag: str, name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value.lower() not in allowed:
        raise TwimlError(f"<{tag}> {name}={value!r} is not one of {', '.join(allowed)}")


def _check_language(tag: str, name: str, value: str | None) -> None:
    if value is not None and not _LANGUAGE_CODE.match(value):
        raise TwimlError(f"<{tag}> {name}={value!r} is not a language code")


def _relay_language(el: ET.Element) -> RelayLanguage:
    code = el.get("code")
    if not code:
        raise TwimlError("<Language> without code")
    _check_language("Language", "code", code)
    for name in ("ttsProvider", "transcriptionProvider"):
        _check_enum("Language", name, el.get(name), _RELAY_ENUMS[name])
    return RelayLanguage(code=code, attributes=tuple(el.attrib.items()))


def _conversation_relay(el: ET.Element) -> ConversationRelay:
    url = el.get("url") or ""
    if not url.lower().startswith(("ws://", "wss://")):
        raise TwimlError(f"<ConversationRelay> url={url!r} is not a ws:// or wss:// URL")
    for name, allowed in _RELAY_ENUMS.items():
        _check_enum("ConversationRelay", name, el.get(name), allowed)
    for name in _RELAY_BOOLS:
        if el.get(name) is not None:
            _bool_attr(el, name)
    for name in ("language", "ttsLanguage", "transcriptionLanguage"):
        _check_language("ConversationRelay", name, el.get(name))
    parameters: list[tuple[str, str]] = []
    languages: list[RelayLanguage] = []
    for child in el:
        if child.tag == "Parameter":
            param = child.get("name")
            if not param:
                raise TwimlError("<Parameter> without name")
            parameters.append((param, child.get("value", "")))
        elif child.tag == "Language":
            languages.append(_relay_language(child))
        else:
            raise TwimlError(f"<{child.tag}> is not allowed inside <ConversationRelay>")
    return ConversationRelay(
        url=url,
        attributes=tuple(el.attrib.items()),
        parameters=tuple(parameters),
        languages=tuple(languages),
    )


def _connect(el: ET.Element) -> Connect:
    nouns = list(el)
    if len(nouns) != 1:
        raise TwimlError(f"<Connect> needs exactly one noun, got {len(nouns)}")
    if nouns[0].tag != "ConversationRelay":
        # <Stream>, <Room>, <VirtualAgent>...: real, but not what callsim simulates.
        raise TwimlError(f"unsupported noun <{nouns[0].tag}> inside <Connect>")
    return Connect(
        relay=_conversation_relay(nouns[0]), action=el.get("action") or None, method=_method(el)
    )


_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


def _dial(el: ET.Element) -> Dial:
    nouns = list(el)
    bare = (el.text or "").strip()
    if bare and nouns:
        raise TwimlError("<Dial> with both text and nouns")
    if not nouns:
        if not bare:
            raise TwimlError("<Dial> with nothing to dial")
        noun, target = "Number", bare
    elif len(nouns) != 1:
        raise TwimlError(f"<Dial> needs one noun here, got {len(nouns)}")
    elif nouns[0].tag in ("Number", "Sip"):
        noun, target = nouns[0].tag, (nouns[0].text or "").strip()
    else:
        # <Client>, <Conference>, <Queue>...: real, but not what callsim simulates.
        raise TwimlError(f"unsupported noun <{nouns[0].tag}> inside <Dial>")
    if noun == "Number" and not _E164.match(target):
        raise TwimlError(f"<Number> {target!r} is not an E.164 number")
    if noun == "Sip" and not target.lower().startswith(("sip:", "sips:")):
        raise TwimlError(f"<Sip> {target!r} is not a sip: URI")
    return Dial(
        target=target,
        noun=noun,
        action=el.get("action") or None,
        method=_method(el),
        timeout_s=_int_attr(el, "timeout", 30, minimum=1),
    )


def _verb(el: ET.Element) -> Verb:
    if el.tag == "Say":
        return _say(el)
    if el.tag == "Play":
        return _play(el)
    if el.tag == "Pause":
        return _pause(el)
    if el.tag == "Gather":
        return _gather(el)
    if el.tag == "Redirect":
        return _redirect(el)
    if el.tag == "Hangup":
        return Hangup()
    if el.tag == "Reject":
        return Reject(reason=el.get("reason", "rejected"))
    if el.tag == "Connect":
        return _connect(el)
    if el.tag == "Dial":
        return _dial(el)
    # <Record>, <Enqueue>... are real Twilio verbs, but a voice bot bridge never means to send
    # them; callsim treats them as it treats garbage.
    raise TwimlError(f"unsupported verb <{el.tag}>")


def parse(body: str | bytes) -> Document:
    """Parse a webhook response body. Raises TwimlError for anything Twilio would reject."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise TwimlError(f"invalid XML: {exc}") from None
    if root.tag != "Response":
        raise TwimlError(f"root element is <{root.tag}>, not <Response>")
    return Document(verbs=tuple(_verb(el) for el in root))


def resolve(base_url: str, target: str | None) -> str:
    """Resolve an action/Redirect URL as Twilio does: relative to the document's URL.

    No target means the document's own URL (Twilio re-requests the current document).
    """
    if not target:
        return base_url
    return urljoin(base_url, target)
