"""EdgeSettings: the edge process's whole configuration, read once from the environment."""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.config import ConfigError, Env, Secret, redis_url
from shared.routes import DEFAULT_ROUTE, load_routes

DEFAULT_REPROMPT = "Sorry, I didn't catch that. Could you say it again?"
DEFAULT_HOLD = "One moment please."
DEFAULT_GOODBYE = "I didn't hear anything, so I'll hang up now. Goodbye!"
DEFAULT_UNAVAILABLE = "Sorry, this line is not available right now. Please call again later."
MS_PER_S = 1000
DEFAULT_TROUBLE = "Sorry, I'm having trouble right now. Please say that again in a moment."
#: How long the hold loop's Gather listens between two waits (Twilio's shortest timeout).
HOLD_LISTEN_S = 1
#: The hold loop outlasts the bot's time-out past the deadline by this much.
HOLD_MARGIN_S = 2.0
DEFAULT_TRANSFER_REFUSED = "Sorry, I can't connect you to that line. How else can I help?"
DEFAULT_VOICEMAIL = "Hello, this is an automated call. Sorry we missed you; we will call back."

# TRANSFER_TARGETS entries: NAME=+E164 or NAME=sip:user@host (a <Dial> <Number> or <Sip>).
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_PREFIX = re.compile(r"^\+[1-9][0-9]{0,14}$")
_SIP_URI = re.compile(r"^sips?:[^\s@<>\"']+@[^\s@<>\"']+$", re.IGNORECASE)
# VOICES entries: xx-YY=VOICE (a <Say> voice name such as Polly.Lupe or Google.es-US-Standard-A).
_LANGUAGE = re.compile(r"^([A-Za-z]{2,3})-([A-Za-z]{2})$")
_VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_GOOGLE_VOICE_LOCALE = re.compile(r"^Google\.([a-z]{2,3}-[A-Z]{2})-", re.IGNORECASE)

VOICE_MODES = ("gather", "relay")
GATHER_INPUTS = ("dtmf speech", "speech", "dtmf")
#: What Twilio accepts as finishOnKey ("" = none: only the pause ends the keys).
FINISH_KEYS = frozenset("0123456789*#")
# ConversationRelay's providers as Twilio spells them; unset = Twilio's default (ElevenLabs for
# speech, Deepgram for transcription). A provider/voice pair Twilio refuses drops the call, so
# the edge never sets one the operator did not choose.
TTS_PROVIDERS = {"google": "Google", "amazon": "Amazon", "elevenlabs": "ElevenLabs"}
TRANSCRIPTION_PROVIDERS = {"deepgram": "Deepgram", "google": "Google"}


#: Dialled only when OUTBOUND_ALLOWED_PREFIXES names them itself (a prefix as long or longer):
#: the North American premium-rate codes, a classic of toll fraud, are not part of "+1".
PREMIUM_PREFIXES = ("+1900", "+1976")


@dataclass(frozen=True)
class OutboundSettings:
    """POST /v1/calls: the bot calls people (edge/outbound.py). No API_TOKEN, no API (404)."""

    api_token: Secret
    from_number: str  # "" = every request must give `from`
    amd: bool  # Twilio's answering-machine detection (MachineDetection=DetectMessageEnd)
    allowed_prefixes: tuple[str, ...]
    max_cps: int  # calls placed per second across every edge process (Twilio's account CPS)
    twilio_api_base_url: str
    voicemail_message: str  # spoken to a machine when the bot says nothing in time
    # How long a machine's opening turn waits for the bot's reply to `voicemail`: shorter than
    # REPLY_DEADLINE_MS, since a recording that hears seconds of silence may stop.
    voicemail_wait_s: float

    @property
    def enabled(self) -> bool:
        return bool(self.api_token.value)

    def allows(self, number: str) -> bool:
        """An E.164 number OUTBOUND_ALLOWED_PREFIXES lets us dial (premium rate: only when a
        listed prefix names it)."""
        if not _E164.match(number):
            return False
        listed = [p for p in self.allowed_prefixes if number.startswith(p)]
        if not listed:
            return False
        premium = [p for p in PREMIUM_PREFIXES if number.startswith(p)]
        return not premium or any(len(p) >= len(premium[0]) for p in listed)


def parse_outbound(env: Env) -> OutboundSettings:
    from_number = env.str("OUTBOUND_FROM", "")
    if from_number and not _E164.match(from_number):
        raise ConfigError(f"OUTBOUND_FROM must be an E.164 number, got {from_number!r}")
    prefixes = tuple(p.strip() for p in env.str("OUTBOUND_ALLOWED_PREFIXES", "+1").split(","))
    for prefix in prefixes:
        if not _PREFIX.match(prefix):
            raise ConfigError(
                f"OUTBOUND_ALLOWED_PREFIXES: bad entry {prefix!r}: want +CC..., comma-separated"
            )
    return OutboundSettings(
        api_token=env.secret("API_TOKEN", required=False),
        from_number=from_number,
        amd=env.bool("OUTBOUND_AMD", True),
        allowed_prefixes=prefixes,
        max_cps=env.int("OUTBOUND_MAX_CPS", 1, min_value=1, max_value=1000),
        twilio_api_base_url=env.url("TWILIO_API_BASE_URL", "https://api.twilio.com").rstrip("/"),
        voicemail_message=env.str("VOICEMAIL_MESSAGE", DEFAULT_VOICEMAIL),
        voicemail_wait_s=env.int("VOICEMAIL_WAIT_MS", 2000, min_value=100, max_value=13000)
        / MS_PER_S,
    )


@dataclass(frozen=True)
class EdgeSettings:
    # The seed integration's fields, one to one.
    enabled: bool
    public_url: str
    account_sid: str
    auth_token: Secret
    reprompt_phrase: str
    voice: str
    language: str
    timeout_s: int
    speech_timeout: str
    # Ours.
    redis_url: str
    host: str
    port: int
    workers: int
    reply_deadline_s: float
    max_silent_turns: int
    hold_phrase: str
    goodbye_phrase: str
    unavailable_phrase: str
    trouble_phrase: str
    grpc_bind_host: str
    grpc_advertise_host: str
    grpc_port: int
    grpc_token: Secret
    max_body_bytes: int
    graceful_timeout_s: int
    log_level: str
    # Keypad: what the Gather listens for ("dtmf speech", "speech", "dtmf"), the key that ends
    # the keys ("" = none), and relay mode's pause that ends them.
    gather_input: str
    finish_on_key: str
    dtmf_pause_s: float
    # Relay mode (ConversationRelay: one WebSocket per call, replies streamed as text tokens).
    voice_mode: str
    relay_tts_provider: str  # "" = Twilio's default
    relay_voice: str  # "" = the provider's default voice
    relay_transcription_provider: str  # "" = Twilio's default
    # The bot's own time-out (the worker's BOT_TIMEOUT_MS): a relay session keeps waiting this
    # long past the deadline, because the worker then sends the fallback phrase.
    bot_timeout_s: float
    # Transfer to a person: NAME (lower case) -> E.164 number or SIP URI; only these are dialled.
    transfer_targets: Mapping[str, str]
    transfer_refused_phrase: str
    # Language switch: code (es-US) -> the voice it is spoken with; only these are switched to.
    voices: Mapping[str, str]
    # The hold loop after a late turn: how long /twilio/wait holds a webhook for the late reply.
    hold_wait_s: float
    # Outbound calls (POST /v1/calls).
    outbound: OutboundSettings
    # ROUTES_FILE ("" = none) and its routes' settings, each these settings with the route's
    # values laid over (shared/routes.py); empty without a file: by_route() is {"default": self}.
    routes_file: str = ""
    routes: Mapping[str, EdgeSettings] = field(default_factory=dict)

    def by_route(self) -> Mapping[str, EdgeSettings]:
        """Route name -> the settings of its calls."""
        return self.routes or {DEFAULT_ROUTE: self}

    @property
    def hold_max_loops(self) -> int:
        """Wait loops after a hold phrase before the usual silence handling: enough to cover the
        bot's time-out past the deadline (the worker then sends its fallback), plus a margin."""
        holding_s = max(self.bot_timeout_s - self.reply_deadline_s, 0.0) + HOLD_MARGIN_S
        return max(1, math.ceil(holding_s / self.hold_wait_s))

    @property
    def fallback_url(self) -> str:
        """Twilio's FallbackUrl ("Primary handler fails"): where a failed webhook goes."""
        return f"{self.public_url}/twilio/fallback"

    @property
    def wait_url(self) -> str:
        return f"{self.public_url}/twilio/wait"

    def voice_for(self, language: str) -> str | None:
        """The voice a call in `language` speaks with (LANGUAGE's is VOICE); None: not listed."""
        if language == self.language:
            return self.voice
        return self.voices.get(language)

    def transfer_target(self, name: str) -> str | None:
        """The number or SIP URI a bot's <transfer to="NAME"/> dials; None: not listed."""
        return self.transfer_targets.get(name.strip().lower())

    @property
    def dial_status_url(self) -> str:
        return f"{self.public_url}/twilio/dial-status"

    @property
    def voice_url(self) -> str:
        """The one URL a user pastes into the Twilio console ("A call comes in")."""
        return f"{self.public_url}/twilio/voice"

    @property
    def status_url(self) -> str:
        return f"{self.public_url}/twilio/status"

    @property
    def relay(self) -> bool:
        return self.voice_mode == "relay"

    @property
    def keypad(self) -> bool:
        """The caller can answer with keys: relay mode always (dtmfDetection), gather mode
        when GATHER_INPUT includes dtmf."""
        return self.relay or "dtmf" in self.gather_input.split()

    @property
    def relay_url(self) -> str:
        """The ConversationRelay socket exactly as the TwiML gives it (and Twilio signs it)."""
        # On PUBLIC_URL's host and path prefix, like every webhook (a proxy may strip a prefix).
        scheme, rest = self.public_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/twilio/relay"

    @property
    def relay_action_url(self) -> str:
        return f"{self.public_url}/twilio/relay-action"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EdgeSettings:
        env = Env(environ)
        speech_timeout = env.str("SPEECH_TIMEOUT", "auto").lower()
        if speech_timeout != "auto" and not speech_timeout.isdigit():
            raise ConfigError(
                f"SPEECH_TIMEOUT must be 'auto' or whole seconds, got {speech_timeout!r}"
            )
        account_sid = env.str("TWILIO_ACCOUNT_SID")
        if not (account_sid.startswith("AC") and len(account_sid) == 34):
            raise ConfigError("TWILIO_ACCOUNT_SID must look like AC followed by 32 hex characters")
        grpc_bind = env.str("GRPC_BIND_HOST", "127.0.0.1")
        advertise = env.optional_str("GRPC_ADVERTISE_HOST") or (
            socket.gethostbyname(socket.gethostname())
            if grpc_bind in ("0.0.0.0", "::")
            else grpc_bind
        )
        deadline_ms = env.int("REPLY_DEADLINE_MS", 6000, min_value=50, max_value=13000)
        routes_file = env.str("ROUTES_FILE", "")
        return cls(
            enabled=env.bool("ENABLED", True),
            public_url=env.url("PUBLIC_URL").rstrip("/"),
            account_sid=account_sid,
            auth_token=env.secret("TWILIO_AUTH_TOKEN"),
            reprompt_phrase=env.str("REPROMPT_PHRASE", DEFAULT_REPROMPT),
            voice=env.str("VOICE", "Google.en-US-Standard-C"),
            language=env.str("LANGUAGE", "en-US"),
            timeout_s=env.int("TIMEOUT", 5, min_value=1, max_value=60),
            speech_timeout=speech_timeout,
            redis_url=redis_url(env),
            host=env.str("EDGE_HOST", "0.0.0.0"),
            port=env.int("EDGE_PORT", 8080, min_value=0, max_value=65535),
            workers=env.int("EDGE_WORKERS", 1, min_value=1, max_value=64),
            reply_deadline_s=deadline_ms / MS_PER_S,
            max_silent_turns=env.int("MAX_SILENT_TURNS", 3, min_value=1, max_value=20),
            hold_phrase=env.str("HOLD_PHRASE", DEFAULT_HOLD),
            goodbye_phrase=env.str("GOODBYE_PHRASE", DEFAULT_GOODBYE),
            unavailable_phrase=env.str("UNAVAILABLE_PHRASE", DEFAULT_UNAVAILABLE),
            trouble_phrase=env.str("TROUBLE_PHRASE", DEFAULT_TROUBLE),
            grpc_bind_host=grpc_bind,
            grpc_advertise_host=advertise,
            grpc_port=env.int("GRPC_PORT", 0, min_value=0, max_value=65535),
            grpc_token=env.secret("GRPC_TOKEN", required=False),
            max_body_bytes=env.int("MAX_BODY_BYTES", 16384, min_value=1024),
            graceful_timeout_s=env.int("GRACEFUL_TIMEOUT_S", 20, min_value=1),
            log_level=env.str("LOG_LEVEL", "INFO"),
            gather_input=_gather_input(env.str("GATHER_INPUT", "dtmf speech")),
            finish_on_key=_finish_on_key(env.str("FINISH_ON_KEY", "#", keep_empty=True)),
            dtmf_pause_s=env.int("DTMF_PAUSE_MS", 1500, min_value=100, max_value=10000) / MS_PER_S,
            voice_mode=env.choice("VOICE_MODE", "gather", VOICE_MODES),
            relay_tts_provider=_provider(
                "RELAY_TTS_PROVIDER", env.str("RELAY_TTS_PROVIDER", ""), TTS_PROVIDERS
            ),
            relay_voice=env.str("RELAY_VOICE", ""),
            relay_transcription_provider=_provider(
                "RELAY_TRANSCRIPTION_PROVIDER",
                env.str("RELAY_TRANSCRIPTION_PROVIDER", ""),
                TRANSCRIPTION_PROVIDERS,
            ),
            bot_timeout_s=env.int("BOT_TIMEOUT_MS", 20000, min_value=100, max_value=120000)
            / MS_PER_S,
            transfer_targets=parse_transfer_targets(env.str("TRANSFER_TARGETS", "")),
            transfer_refused_phrase=env.str("TRANSFER_REFUSED_PHRASE", DEFAULT_TRANSFER_REFUSED),
            voices=parse_voices(env.str("VOICES", "")),
            hold_wait_s=env.int("HOLD_WAIT_MS", 1000, min_value=50, max_value=5000) / MS_PER_S,
            outbound=parse_outbound(env),
            routes_file=routes_file,
            # Each route through this very parser: one validator for the file and the env.
            routes=load_routes(routes_file).build(cls.from_env, environ) if routes_file else {},
        )


def parse_voices(raw: str) -> dict[str, str]:
    """`es-US=Polly.Lupe,fr-FR=Polly.Lea` -> {"es-US": "Polly.Lupe", ...}, codes normalised. A
    bad entry is a ConfigError naming it (Twilio drops a call whose voice it refuses)."""
    voices: dict[str, str] = {}
    for entry in raw.split(","):
        if not entry.strip():
            continue
        code, sep, voice = (part.strip() for part in entry.partition("="))
        match = _LANGUAGE.match(code)
        if not sep or not match or not _VOICE_NAME.match(voice):
            raise ConfigError(
                f"VOICES: bad entry {entry.strip()!r}: want xx-YY=VOICE (es-US=Polly.Lupe)"
            )
        code = f"{match.group(1).lower()}-{match.group(2).upper()}"
        google = _GOOGLE_VOICE_LOCALE.match(voice)
        if google and google.group(1).lower() != code.lower():
            raise ConfigError(f"VOICES: bad entry {entry.strip()!r}: {voice} does not speak {code}")
        if code in voices:
            raise ConfigError(f"VOICES: bad entry {entry.strip()!r}: {code} twice")
        voices[code] = voice
    return voices


def parse_transfer_targets(raw: str) -> dict[str, str]:
    """`sales=+14155550123,support=sip:help@example.com` -> {name: number or SIP URI}. A bad
    entry is a ConfigError naming it: a typo must not leave a target undiallable at 3 a.m."""
    targets: dict[str, str] = {}
    for entry in raw.split(","):
        if not entry.strip():
            continue
        name, sep, target = (part.strip() for part in entry.partition("="))
        if not sep or not _TARGET_NAME.match(name):
            raise ConfigError(
                f"TRANSFER_TARGETS: bad entry {entry.strip()!r}: want NAME=+E164 or "
                "NAME=sip:user@host, NAME of letters, digits, - and _"
            )
        if not (_E164.match(target) or _SIP_URI.match(target)):
            raise ConfigError(
                f"TRANSFER_TARGETS: bad entry {entry.strip()!r}: {target!r} is neither an E.164 "
                "number (+14155550123) nor a SIP URI (sip:user@host)"
            )
        if name.lower() in targets:
            raise ConfigError(f"TRANSFER_TARGETS: bad entry {entry.strip()!r}: {name} twice")
        targets[name.lower()] = target
    return targets


def _provider(name: str, value: str, known: Mapping[str, str]) -> str:
    """Twilio's spelling of a provider named in any case; "" stays unset."""
    if value and value.lower() not in known:
        raise ConfigError(f"{name} must be one of {', '.join(known.values())}, got {value!r}")
    return known.get(value.lower(), "")


def _gather_input(value: str) -> str:
    """GATHER_INPUT as Twilio spells it: "dtmf speech" (either order), "speech" or "dtmf"."""
    parts = sorted(set(value.lower().split()))
    spelled = " ".join(parts)
    if spelled not in GATHER_INPUTS:
        raise ConfigError(f"GATHER_INPUT must be one of {', '.join(GATHER_INPUTS)}, got {value!r}")
    return spelled


def _finish_on_key(value: str) -> str:
    if value and (len(value) != 1 or value not in FINISH_KEYS):
        raise ConfigError(f"FINISH_ON_KEY must be one of 0-9, * or #, or empty, got {value!r}")
    return value
