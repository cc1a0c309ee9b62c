"""Relay mode (TurnRequest.stream): a reply delivered part by part, as the bot produces it.

Each bot message goes to the edge as soon as it arrives: one Deliver per part (part 1, 2, ...,
one at a time, `more` set), whose `text` is that message's speech by the rules gather uses
(worker/speech.py), with one leading space before every message but the first so the tokens
join. A streamed message (`message_stream_delta`) goes out delta by delta, spacing as the bot
gave it; its final message then adds only what the deltas did not say. A marker is never spoken,
even split across deltas: a trailing fragment that could still become one (an unclosed `<`) is
held back until it is resolved. The final part (`more` false) carries hangup, options and
fallback, and may have no text; when the end-of-turn rule ends the turn at a message (a question,
a marker, a learned quiet window of 0), that message is the final part itself, so a one-message
reply costs one Deliver, not two (`message(..., last=True)`). A transfer marker ends the reply
like a hangup marker does (its NAME goes in the final part's `transfer_to`). A language marker
does not end it: the part whose text follows it (or the final part) carries the code in
`language`, so the edge switches before that text.

The edge's answers decide the rest: `stop` (the caller cut the reply off) → no more parts and
nothing kept; not accepted (its session is gone) → nothing more is sent, and the whole reply,
the parts already sent included, is kept as one late reply (part 0: `say` holds every sentence,
`text` all of it) for whichever session or webhook the call reaches next.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.pb import voicebridge_pb2 as pb
from worker.speech import (
    MAX_LANGUAGE_CODE,
    MAX_TRANSFER_NAME,
    Speech,
    find_language,
    find_marker,
    render_payload,
)

log = logging.getLogger(__name__)

PartSender = Callable[[pb.TurnReply], Awaitable[pb.DeliverAck]]


def _prefix_pattern(pieces: Sequence[str]) -> str:
    """A regex matching any prefix of the pieces in sequence (each piece whole or not yet)."""
    pattern = ""
    for piece in reversed(pieces):
        pattern = f"(?:{piece}{pattern})?"
    return pattern


def _quoted_prefix(quote: str, longest: int = MAX_TRANSFER_NAME) -> str:
    """A quoted value and the marker's end, up to its `>`: started (the quote came) or not."""
    rest = [quote, r"\s*", "/", r"\s*"]
    return f"{quote}[^{quote}<>]{{0,{longest}}}{_prefix_pattern(rest)}"


def _value_start(longest: int) -> str:
    return f"(?:{_quoted_prefix(chr(34), longest)}|{_quoted_prefix(chr(39), longest)})"


_HANGUP_START = _prefix_pattern([*"hangup", r"\s*", "/", r"\s*"])
_TRANSFER_START = _prefix_pattern(
    [*"transfer", r"\s+", *"to", r"\s*", "=", r"\s*", _value_start(MAX_TRANSFER_NAME)]
)
_LANGUAGE_START = _prefix_pattern(
    [*"language", r"\s+", *"code", r"\s*", "=", r"\s*", _value_start(MAX_LANGUAGE_CODE)]
)
# What the start of a marker can look like before its `>` arrived ("<", "< HANG",
# '<transfer to="sa', "<language code='es", ...).
_MARKER_START = re.compile(
    rf"<\s*(?:{_HANGUP_START}|{_TRANSFER_START}|{_LANGUAGE_START})\Z", re.IGNORECASE
)
_SPACES = re.compile(r"\s+")


def unresolved_marker_at(text: str) -> int:
    """Where a trailing fragment of `text` that could still become a marker starts (len(text):
    there is none). Only the last `<` can start one: a marker holds no other `<`."""
    at = text.rfind("<")
    if at >= 0 and _MARKER_START.match(text, at):
        return at
    return len(text)


def unsaid_rest(sent: str, said: str) -> str:
    """What a streamed message's final text `said` adds to the deltas already `sent` (spacing
    aside); nothing when the deltas covered it, or said it otherwise."""
    sent = _SPACES.sub(" ", sent).lstrip()
    for prefix in (sent, sent.rstrip()):
        if said.startswith(prefix):
            return said[len(prefix) :]
    log.info("a streamed message's final text differs from its deltas; not said again")
    return ""


@dataclass
class _Segment:
    """One bot message's (or one earlier late reply's) speech, as given to the caller so far."""

    text: str = ""
    held: str = ""  # a possible marker start, not sent yet
    ended: bool = False
    say: list[str] | None = None  # its sentences (None: a stream, said as its text)

    def sentences(self) -> list[str]:
        if self.say is not None:
            return self.say
        said = _SPACES.sub(" ", self.text).strip()
        return [said] if said else []


@dataclass
class ReplyStream:
    """One relay turn's reply: feed it the bot's signals as they come, then `finish`."""

    turn: pb.TurnRequest
    send: PartSender
    hangup: bool = False  # a marker ended the call: nothing after it is said
    transfer_to: str = ""  # a transfer marker's NAME: nothing after it is said either
    stopped: bool = False  # the caller cut in: nothing more is sent, nothing kept
    gone: bool = False  # nobody takes parts any more: all of it becomes one late reply
    bot_spoke: bool = False
    _late_hangup: bool = False
    _part: int = 0
    _texts: list[str] = field(default_factory=list)  # every part's text, sent or not
    _segments: list[_Segment] = field(default_factory=list)
    _streams: dict[str, _Segment] = field(default_factory=dict)
    _given: set[Any] = field(default_factory=set)  # ids of the messages already handled
    _options_read: int = 0  # options of this turn read so far (the next one's key follows)
    _language: str = ""  # the latest language marker's code
    _language_due: str = ""  # a code not sent yet: the next part carries it
    _held: pb.TurnReply | None = None  # the reply's last message: `finish` sends it as the final

    @property
    def finished(self) -> bool:
        """Nothing more the bot says is wanted: a marker ended the call (or asked for a
        transfer), or the caller cut in."""
        return self.hangup or bool(self.transfer_to) or self.stopped

    async def earlier(self, sentences: Sequence[str], hangup: bool) -> None:
        """Replies kept late for this call: said first (their hangup ends the call after)."""
        self._late_hangup = self._late_hangup or hangup
        if sentences:
            await self._emit(self._segment(list(sentences)), " ".join(sentences), bot=False)

    async def message(self, message: dict[str, Any], last: bool = False) -> None:
        """A whole bot message (a streamed one's final message too), in arrival order. `last`:
        the turn ends with it, so its speech waits for `finish` and goes out as the final part."""
        key = message.get("id") or id(message)
        if key in self._given:
            return
        self._given.add(key)
        if self.finished:
            return
        # Options are numbered over the turn, as render_messages numbers them for the state.
        speech = Speech(keypad=self.turn.keypad, key_offset=self._options_read)
        payload = message.get("payload")
        if isinstance(payload, dict):
            render_payload(payload, speech)
        self._options_read += len(speech.options)
        if speech.language:
            self._switch(speech.language)
        said = " ".join(speech.sentences)
        stream_id = (message.get("metadata") or {}).get("streamId")
        segment = self._streams.get(str(stream_id)) if stream_id else None
        if segment is not None and segment.text:
            segment.ended, segment.held = True, ""
            await self._emit(segment, unsaid_rest(segment.text, said), hold=last)
        else:
            segment = segment or self._segment(None)
            segment.ended, segment.held, segment.say = True, "", speech.sentences
            await self._emit(segment, said, speech.sentences, speech.options, hold=last)
        self.hangup = self.hangup or speech.hangup
        self.transfer_to = self.transfer_to or speech.transfer_to

    async def delta(self, stream_id: str, chunk: str) -> None:
        """A piece of a message the bot is still generating (message_stream_delta)."""
        if self.finished:
            return
        segment = self._streams.get(stream_id)
        if segment is None:
            segment = self._streams[stream_id] = self._segment(None)
        if segment.ended:
            return
        buffer = segment.held + chunk
        marker = find_marker(buffer)
        language = find_language(buffer)
        while language is not None and (marker is None or language.start < marker.start):
            # The text before it in the language so far, the rest in the new one.
            await self._emit(segment, buffer[: language.start])
            if language.code:
                self._switch(language.code)
            buffer = buffer[language.end :]
            marker, language = find_marker(buffer), find_language(buffer)
        if marker is not None:
            segment.ended, segment.held = True, ""
            await self._emit(segment, buffer[: marker.start])
            self.hangup, self.transfer_to = marker.hangup, marker.transfer_to
            return
        cut = unresolved_marker_at(buffer)
        segment.held = buffer[cut:]
        await self._emit(segment, buffer[:cut])

    def abort(self, stream_id: str) -> None:
        """message_stream_abort: nothing more of that stream (a held fragment is dropped)."""
        segment = self._streams.get(stream_id)
        if segment is not None:
            segment.ended, segment.held = True, ""

    async def settle(self, messages: Sequence[dict[str, Any]]) -> None:
        """The turn's messages as collected: any not handled yet (the listen stream dropped and
        they came from the message list) are said now, in order."""
        for message in messages:
            await self.message(message)

    async def finish(self, reply: pb.TurnReply) -> tuple[pb.TurnReply, bool]:
        """The final part, from the turn's whole reply (hangup, options, fallback), and whether
        the edge took the reply; when it did not, what to keep late instead (part 0, all)."""
        text, say = "", list(reply.say) if reply.fallback else []
        if reply.fallback:
            segment = self._segment(say)
            text = self._spaced(segment, " ".join(say))
            segment.text = text
            self._texts.append(text)
        final = self._reply(text, say, list(reply.options), more=False)
        final.hangup = reply.hangup or self.hangup or self._late_hangup
        final.transfer_to = "" if final.hangup else reply.transfer_to or self.transfer_to
        final.fallback = reply.fallback
        final.language, self._language_due = self._language_due, ""
        held, self._held = self._held, None
        if held is not None and held.language and final.language:
            # A language marker after the last text: that text in its own language first.
            await self._send_part(held)
        elif held is not None:
            final.text = held.text + final.text
            final.say[:0] = held.say
            final.language = held.language or final.language
        if self.stopped:
            return final, True
        if not self.gone:
            self._part += 1
            final.part = self._part
            self._take(await self.send(final))
            if not self.gone:
                return final, True
        late = self._reply("".join(self._texts), [], list(reply.options), more=False)
        late.part = 0
        late.say.extend(s for segment in self._segments for s in segment.sentences())
        late.hangup, late.fallback = final.hangup, final.fallback
        late.transfer_to = final.transfer_to
        late.language = self._language
        return late, False

    # -- parts ---------------------------------------------------------------------------------
    def _switch(self, code: str) -> None:
        self._language = self._language_due = code

    def _segment(self, say: list[str] | None) -> _Segment:
        segment = _Segment(say=say)
        self._segments.append(segment)
        return segment

    def _spaced(self, segment: _Segment, text: str) -> str:
        """A message's first text gets one leading space when something was said before it."""
        if segment.text or not text or text[0].isspace():
            return text
        before = next((t for t in reversed(self._texts) if t), "")
        return " " + text if before and not before[-1].isspace() else text

    async def _emit(
        self,
        segment: _Segment,
        text: str,
        say: Sequence[str] = (),
        options: Sequence[tuple[str, str]] = (),
        bot: bool = True,
        hold: bool = False,
    ) -> None:
        if not text:
            return
        text = self._spaced(segment, text)
        segment.text += text
        self._texts.append(text)
        self.bot_spoke = self.bot_spoke or bot
        if self.stopped or self.gone:
            return
        part = self._reply(text, list(say), [pb.Option(label=lb, value=v) for lb, v in options])
        part.language, self._language_due = self._language_due, ""
        if hold:
            self._held = part
            return
        await self._send_part(part)

    async def _send_part(self, part: pb.TurnReply) -> None:
        if self.stopped or self.gone:
            return
        self._part += 1
        part.part = self._part
        self._take(await self.send(part))

    def _take(self, ack: pb.DeliverAck) -> None:
        if not ack.accepted:
            if not self.gone:
                log.info(
                    "relay session gone; the reply is kept as late",
                    extra={"turn_id": self.turn.turn_id},
                )
            self.gone = True
        elif ack.stop:
            self.stopped = True

    def _reply(
        self, text: str, say: list[str], options: Sequence[pb.Option], more: bool = True
    ) -> pb.TurnReply:
        return pb.TurnReply(
            turn_id=self.turn.turn_id,
            call_sid=self.turn.call_sid,
            seq=self.turn.seq,
            say=say,
            options=list(options),
            more=more,
            text=text,
        )
