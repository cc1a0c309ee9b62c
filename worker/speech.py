"""What a phone can say: Botpress message payloads rendered as plain sentences.

Text and markdown become plain speech; choice/dropdown are read as the question and its options
(which also become Gather hints); cards give title, subtitle and actions; carousels and blocs are
read item by item; media is skipped. A `<hangup/>` marker (any case, optional space) ends the
call after the text before it; a `<transfer to="NAME"/>` marker (any case, spaces, single or
double quotes) asks for a transfer after the text before it. Nothing after those is said. A
`<language code="xx-YY"/>` marker (as tolerant) switches the call's language and speech goes on;
only a code that looks like `xx-YY` counts (another is dropped, unspoken). No marker is ever
spoken. The worker only passes the NAME and the code on: the edge decides whether the operator
listed them (TRANSFER_TARGETS, VOICES), since bot text may repeat what a caller said.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

HANGUP_MARKER = re.compile(r"<\s*hangup\s*/\s*>", re.IGNORECASE)
#: Longest NAME a transfer marker is read with (a longer "name" is no marker: it is spoken).
MAX_TRANSFER_NAME = 64
TRANSFER_MARKER = re.compile(
    rf"""<\s*transfer\s+to\s*=\s*(?:"([^"<>]{{0,{MAX_TRANSFER_NAME}}})"|'([^'<>]{{0,{MAX_TRANSFER_NAME}}})')\s*/\s*>""",
    re.IGNORECASE,
)
#: Longest code a language marker is read with (a longer one is no marker: it is spoken).
MAX_LANGUAGE_CODE = 16
LANGUAGE_MARKER = re.compile(
    rf"""<\s*language\s+code\s*=\s*(?:"([^"<>]{{0,{MAX_LANGUAGE_CODE}}})"|'([^'<>]{{0,{MAX_LANGUAGE_CODE}}})')\s*/\s*>""",
    re.IGNORECASE,
)
# BCP-47 as the edge's VOICES keys are written: language-REGION ("es-US"), nothing else.
_LANGUAGE_CODE = re.compile(r"^([A-Za-z]{2,3})-([A-Za-z]{2})$")


def language_code(raw: str) -> str:
    """`raw` as a normalised `xx-YY` code ("ES-us" -> "es-US"); "" when it is not one."""
    match = _LANGUAGE_CODE.match(raw.strip())
    return f"{match.group(1).lower()}-{match.group(2).upper()}" if match else ""


@dataclass(frozen=True)
class LanguageMarker:
    """A `<language code=.../>` in bot text: where it is, and its code ("" = malformed)."""

    start: int
    end: int
    code: str


def find_language(text: str, pos: int = 0) -> LanguageMarker | None:
    """The first language marker in `text` from `pos` (None: there is none)."""
    found = LANGUAGE_MARKER.search(text, pos)
    if found is None:
        return None
    code = language_code(found.group(1) or found.group(2) or "")
    return LanguageMarker(found.start(), found.end(), code)


def strip_languages(text: str) -> tuple[str, str]:
    """`text` without its language markers, and the last well-formed code among them."""
    kept, language, pos = [], "", 0
    while (marker := find_language(text, pos)) is not None:
        kept.append(text[pos : marker.start])
        language = marker.code or language
        pos = marker.end
    kept.append(text[pos:])
    return "".join(kept), language


@dataclass(frozen=True)
class Marker:
    """A call-control marker found in bot text: where it starts and ends, and what it asks."""

    start: int
    end: int
    transfer_to: str = ""  # "" = a hangup

    @property
    def hangup(self) -> bool:
        return not self.transfer_to


def find_marker(text: str) -> Marker | None:
    """The first hangup or transfer marker in `text` (None: there is none)."""
    found: list[Marker] = []
    hangup = HANGUP_MARKER.search(text)
    if hangup:
        found.append(Marker(hangup.start(), hangup.end()))
    transfer = TRANSFER_MARKER.search(text)
    if transfer:
        name = (transfer.group(1) or transfer.group(2) or "").strip()
        # An empty NAME is still a marker (never spoken), one no target has: the edge refuses it.
        found.append(Marker(transfer.start(), transfer.end(), name or '""'))
    return min(found, key=lambda m: m.start) if found else None


_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_CODE_FENCE = re.compile(r"```[^\n]*\n?")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*", re.MULTILINE)
_MD_QUOTE = re.compile(r"^\s{0,3}>\s?", re.MULTILINE)
_MD_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.MULTILINE)
_MD_EMPHASIS = re.compile(r"(\*\*|__|~~|\*|_|`)(?=\S)(.+?)(?<=\S)\1")
_MD_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$", re.MULTILINE)
_SPACES = re.compile(r"\s+")
#: One key picks an option ("1".."9"): options past the ninth are read without a key.
MAX_OPTION_KEY = 9


@dataclass
class Speech:
    sentences: list[str] = field(default_factory=list)
    options: list[tuple[str, str]] = field(default_factory=list)  # (label, value)
    # The caller can press keys (TurnRequest.keypad): options are read with the key of each,
    # numbered over the whole turn from key_offset + 1 (worker/turn_handler.py's keypad rule).
    keypad: bool = False
    key_offset: int = 0
    hangup: bool = False
    transfer_to: str = ""  # a transfer marker's NAME, as written
    language: str = ""  # the last language marker's code (normalised), "" = none

    @property
    def ended(self) -> bool:
        """A marker was met: nothing more of this turn is said."""
        return self.hangup or bool(self.transfer_to)

    def add(self, text: str) -> None:
        """Adds text, cutting at a hangup or transfer marker; language markers are taken out."""
        if self.ended:
            return
        cut = find_marker(text)
        if cut:
            text = text[: cut.start]
            self.hangup = cut.hangup
            self.transfer_to = cut.transfer_to
        text, language = strip_languages(text)
        self.language = language or self.language
        text = _SPACES.sub(" ", text).strip()
        if text:
            self.sentences.append(text)


def markdown_to_speech(markdown: str) -> str:
    text = _MD_CODE_FENCE.sub("", markdown)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_RULE.sub("", text)
    text = _MD_HEADING.sub("", text)
    text = _MD_QUOTE.sub("", text)
    text = _MD_BULLET.sub("", text)
    for _ in range(2):  # nested emphasis such as ***bold italic***
        text = _MD_EMPHASIS.sub(r"\2", text)
    # Line breaks (list items, paragraphs) read better as sentence pauses.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return " ".join(ln if ln[-1] in ".!?:;," else f"{ln}." for ln in lines)


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f", or {items[-1]}"


def _read_options(intro: str, labels: list[str], first_key: int | None = None) -> str:
    """The options after their question: "You can say Red, or Green." With a keypad
    (`first_key`, the key of the first), "Press 1 for Red, or 2 for Green."; options past
    key 9 have no key (one key picks an option), and are read as "Or say ...".
    """
    if not labels:
        return intro
    keyed: list[str] = []
    if first_key is not None:
        keyed = [f"{key} for {label}" for key, label in enumerate(labels, first_key)]
        keyed = keyed[: max(MAX_OPTION_KEY - first_key + 1, 0)]
    rest = labels[len(keyed) :]
    read = [f"Press {_either(keyed)}."] if keyed else []
    if rest:
        read.append(f"{'Or say' if keyed else 'You can say'} {_either(rest)}.")
    return " ".join([intro, *read] if intro else read)


def _offer(speech: Speech, intro: str, pairs: list[tuple[str, str]]) -> None:
    """A question and its options (label, value): read, and kept as the turn's options."""
    first_key = speech.key_offset + len(speech.options) + 1 if speech.keypad else None
    speech.add(_read_options(intro, [label for label, _ in pairs], first_key))
    speech.options.extend(pairs)


def render_payload(payload: dict[str, Any], speech: Speech) -> None:
    kind = payload.get("type")
    if kind == "text":
        speech.add(str(payload.get("text", "")))
    elif kind == "markdown":
        speech.add(markdown_to_speech(str(payload.get("markdown", ""))))
    elif kind in ("choice", "dropdown"):
        options = [o for o in payload.get("options", []) if isinstance(o, dict)]
        pairs = [(_label(o), str(o.get("value", o.get("label", "")))) for o in options]
        _offer(speech, str(payload.get("text", "")).strip(), [p for p in pairs if p[0]])
    elif kind == "card":
        parts = [str(payload.get(k, "")).strip() for k in ("title", "subtitle")]
        intro = ". ".join(p.rstrip(".") for p in parts if p)
        intro = intro + "." if intro else ""
        actions = [a for a in payload.get("actions", []) if isinstance(a, dict)]
        sayable = [a for a in actions if a.get("action") in ("postback", "say")]
        pairs = [(_label(a), str(a.get("value", ""))) for a in sayable]
        _offer(speech, intro, [p for p in pairs if p[0]])
    elif kind in ("carousel", "bloc"):
        for item in payload.get("items", []):
            if isinstance(item, dict):
                render_payload(item, speech)
    elif kind == "location":
        where = payload.get("title") or payload.get("address")
        if where:
            speech.add(f"Location: {where}.")
    elif kind == "file" and payload.get("title"):
        speech.add(f"I sent you a file: {payload['title']}.")
    # image, audio, video, and unknown types: nothing a caller can hear.


def _label(option: dict[str, Any]) -> str:
    return str(option.get("label") or "").strip()


def render_messages(messages: list[dict[str, Any]], keypad: bool = False) -> Speech:
    """Bot messages (already in createdAt order) -> one Speech for the turn (`keypad`: the
    caller can press keys, so options are read with theirs)."""
    speech = Speech(keypad=keypad)
    for message in messages:
        payload = message.get("payload")
        if isinstance(payload, dict):
            render_payload(payload, speech)
    return speech
