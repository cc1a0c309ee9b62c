"""TwiML for each situation of a call, built with twilio's VoiceResponse (which escapes text).

Bot text never reaches the XML unescaped: it is always the text of a <Say>.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlencode

from twilio.twiml.voice_response import VoiceResponse

from edge.settings import HOLD_LISTEN_S, EdgeSettings
from edge.signature import FormParams


class Twiml:
    """Renders the call's responses with the configured voice, language and Gather timing."""

    def __init__(self, settings: EdgeSettings, language: str = "") -> None:
        self._settings = settings
        # A call the bot switched (<language code/>) speaks and listens in that language, with
        # the voice VOICES gives it.
        self._language = language or settings.language
        voice = settings.voice_for(self._language) or settings.voice
        self._say_kwargs = {"voice": voice, "language": self._language}
        self._by_language: dict[str, Twiml] = {}

    def in_language(self, language: str) -> Twiml:
        """The same TwiML in `language`, a VOICES code ("": LANGUAGE)."""
        if not language or language == self._language:
            return self
        if language not in self._by_language:
            self._by_language[language] = Twiml(self._settings, language)
        return self._by_language[language]

    def gather_url(self, seq: int, silent: int = 0) -> str:
        # The turn number and the silent count travel in the action's query string: Twilio signs
        # it, so the edge keeps no per-call state for silence.
        query = urlencode({"turn": seq, "silent": silent})
        return f"{self._settings.public_url}/twilio/gather?{query}"

    def wait_url(self, seq: int, loop: int) -> str:
        return f"{self._settings.wait_url}?{urlencode({'turn': seq, 'loop': loop})}"

    def speak_and_gather(
        self,
        sentences: Iterable[str],
        next_seq: int,
        silent: int = 0,
        hints: Sequence[str] = (),
        hold_loop: int | None = None,
    ) -> str:
        """<Gather><Say>…</Say></Gather>. With `hold_loop` (a late turn's hold): the Gather
        listens HOLD_LISTEN_S, and silence falls through to <Redirect> /twilio/wait, which
        speaks the late reply as soon as it comes (the caller can still speak over the hold)."""
        r = VoiceResponse()
        gather_kwargs: dict[str, object] = {
            "input": self._settings.gather_input,
            "action": self.gather_url(next_seq, silent),
            "method": "POST",
            "timeout": self._settings.timeout_s if hold_loop is None else HOLD_LISTEN_S,
            "speech_timeout": self._settings.speech_timeout,
            "language": self._language,
        }
        if hold_loop is None:
            # Silence comes back to us (no SpeechResult) instead of falling through the TwiML.
            gather_kwargs["action_on_empty_result"] = True
        if "dtmf" in self._settings.gather_input.split():
            # Always written, "" included: Twilio's default is "#", and "" means no finish key.
            gather_kwargs["finish_on_key"] = self._settings.finish_on_key
        if hints:
            gather_kwargs["hints"] = ",".join(h.replace(",", " ") for h in hints)
        gather = r.gather(**gather_kwargs)
        text = " ".join(s for s in sentences if s)
        if text:
            gather.say(text, **self._say_kwargs)
        if hold_loop is not None:
            r.redirect(self.wait_url(next_seq, hold_loop), method="POST")
        return str(r)

    def speak_and_hang_up(self, sentences: Iterable[str]) -> str:
        r = VoiceResponse()
        text = " ".join(s for s in sentences if s)
        if text:
            r.say(text, **self._say_kwargs)
        r.hangup()
        return str(r)

    def speak_and_dial(
        self, sentences: Iterable[str], target: str, query: Mapping[str, object]
    ) -> str:
        """<Say> the text before the marker, then <Dial> a listed target (`<Number>` or `<Sip>`).
        Twilio posts the action (DialCallStatus) when the dialled leg ends; its TwiML goes on."""
        r = VoiceResponse()
        text = " ".join(s for s in sentences if s)
        if text:
            r.say(text, **self._say_kwargs)
        action = f"{self._settings.dial_status_url}?{urlencode(query)}"
        dial = r.dial(action=action, method="POST")
        if target.startswith("+"):
            dial.number(target)
        else:
            dial.sip(target)
        return str(r)

    def trouble_then_redirect(self, phrase: str, url: str) -> str:
        r = VoiceResponse()
        r.say(phrase, **self._say_kwargs)
        r.pause(length=1)
        r.redirect(url, method="POST")
        return str(r)

    def unavailable(self) -> str:
        return self.speak_and_hang_up([self._settings.unavailable_phrase])

    # -- relay mode (ConversationRelay) ------------------------------------------------------
    def connect_relay(
        self, params: FormParams, transfer_failed: tuple[str, str] | None = None
    ) -> str:
        """<Connect action><ConversationRelay url ...> with the call's data as <Parameter>s
        (the socket's URL carries no query: Twilio signs it without one). No welcomeGreeting:
        the greeting is the bot's, the call-start turn of the socket's setup."""
        s = self._settings
        relay_kwargs: dict[str, str] = {
            "url": s.relay_url,
            "language": s.language,
            "interruptible": "any",
            "dtmf_detection": "true",
        }
        # Only what the operator chose: a provider/voice pair Twilio refuses drops the call.
        for name, value in (
            ("tts_provider", s.relay_tts_provider),
            ("voice", s.relay_voice),
            ("transcription_provider", s.relay_transcription_provider),
        ):
            if value:
                relay_kwargs[name] = value
        r = VoiceResponse()
        connect = r.connect(action=s.relay_action_url, method="POST")
        relay = connect.conversation_relay(**relay_kwargs)
        for code, voice in s.voices.items():
            # Every language the bot may switch the session to (a `language` frame), and its voice.
            relay.language(code=code, tts_provider=s.relay_tts_provider or None, voice=voice)
        for name in RELAY_PARAMETERS:
            relay.parameter(name=name, value=params.get(RELAY_PARAMETERS[name], ""))
        if transfer_failed is not None:
            # Back from a transfer nobody took: the session's first turn tells the bot.
            target, status = transfer_failed
            relay.parameter(name=TRANSFER_FAILED_PARAMETER, value=f"{status}:{target}")
        return str(r)

    @staticmethod
    def empty() -> str:
        return str(VoiceResponse())

    @staticmethod
    def hang_up() -> str:
        r = VoiceResponse()
        r.hangup()
        return str(r)


#: <Parameter> of a session that follows a transfer nobody took: "{DialCallStatus}:{NAME}".
TRANSFER_FAILED_PARAMETER = "transferFailed"
# <Parameter name> -> the webhook's form field it carries (setup.customParameters).
# answeredBy: an outbound call's (Twilio's AnsweredBy), for the session's opening turn.
RELAY_PARAMETERS = {
    "callSid": "CallSid",
    "from": "From",
    "to": "To",
    "direction": "Direction",
    "answeredBy": "AnsweredBy",
}
