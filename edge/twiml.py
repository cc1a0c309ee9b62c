"""TwiML for each situation of a call, built with twilio's VoiceResponse (which escapes text).

Bot text never reaches the XML unescaped: it is always the text of a <Say>.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlencode

from twilio.twiml.voice_response import VoiceResponse

from edge.settings import EdgeSettings


class Twiml:
    """Renders the call's responses with the configured voice, language and Gather timing."""

    def __init__(self, settings: EdgeSettings) -> None:
        self._settings = settings
        self._say_kwargs = {"voice": settings.voice, "language": settings.language}

    def gather_url(self, seq: int, silent: int = 0) -> str:
        # The turn number and the silent count travel in the action's query string: Twilio signs
        # it, so the edge keeps no per-call state for silence.
        query = urlencode({"turn": seq, "silent": silent})
        return f"{self._settings.public_url}/twilio/gather?{query}"

    def speak_and_gather(
        self, sentences: Iterable[str], next_seq: int, silent: int = 0, hints: Sequence[str] = ()
    ) -> str:
        r = VoiceResponse()
        gather_kwargs: dict[str, object] = {
            "input": "speech",
            "action": self.gather_url(next_seq, silent),
            "method": "POST",
            "timeout": self._settings.timeout_s,
            "speech_timeout": self._settings.speech_timeout,
            "language": self._settings.language,
            # Silence comes back to us (no SpeechResult) instead of falling through the TwiML.
            "action_on_empty_result": True,
        }
        if hints:
            gather_kwargs["hints"] = ",".join(h.replace(",", " ") for h in hints)
        gather = r.gather(**gather_kwargs)
        text = " ".join(s for s in sentences if s)
        if text:
            gather.say(text, **self._say_kwargs)
        return str(r)

    def speak_and_hang_up(self, sentences: Iterable[str]) -> str:
        r = VoiceResponse()
        text = " ".join(s for s in sentences if s)
        if text:
            r.say(text, **self._say_kwargs)
        r.hangup()
        return str(r)

    def trouble_then_redirect(self, phrase: str, url: str) -> str:
        r = VoiceResponse()
        r.say(phrase, **self._say_kwargs)
        r.pause(length=1)
        r.redirect(url, method="POST")
        return str(r)

    def unavailable(self) -> str:
        return self.speak_and_hang_up([self._settings.unavailable_phrase])
