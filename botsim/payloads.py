"""Message payload validation, mirroring the zod schemas in @botpress/chat (messageCreated.z).

Required strings are non-empty (`z.string().min(1)`); location fields are numbers. Extra keys are
kept, as the platform keeps them.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidPayloadError

_CARD_ACTIONS = {"postback", "url", "say"}
_BLOC_ITEM_TYPES = {"text", "markdown", "image", "audio", "video", "file", "location"}
# Required non-empty string fields per type; optional ones checked when present.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "markdown": ("markdown",),
    "image": ("imageUrl",),
    "audio": ("audioUrl",),
    "video": ("videoUrl",),
    "file": ("fileUrl",),
    "card": ("title",),
    "choice": ("text",),
    "dropdown": ("text",),
    "location": (),
    "carousel": (),
    "bloc": (),
}
_OPTIONAL_NONEMPTY: dict[str, tuple[str, ...]] = {
    "card": ("subtitle", "imageUrl"),
    "file": ("title",),
}
PAYLOAD_TYPES = frozenset(_REQUIRED)


def validate_payload(payload: Any, where: str = "payload") -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidPayloadError(f"{where} must be an object")
    kind = payload.get("type")
    if kind not in _REQUIRED:
        raise InvalidPayloadError(f"{where}.type must be one of {sorted(_REQUIRED)}")
    for name in _REQUIRED[kind]:
        _nonempty_str(payload.get(name), f"{where}.{name}")
    for name in _OPTIONAL_NONEMPTY.get(kind, ()):
        if name in payload:
            _nonempty_str(payload[name], f"{where}.{name}")
    if kind == "card":
        _validate_actions(payload.get("actions"), f"{where}.actions")
    elif kind in ("choice", "dropdown"):
        _validate_options(payload.get("options"), f"{where}.options")
    elif kind == "location":
        for name in ("latitude", "longitude"):
            value = payload.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidPayloadError(f"{where}.{name} must be a number")
        for name in ("address", "title"):
            if name in payload and not isinstance(payload[name], str):
                raise InvalidPayloadError(f"{where}.{name} must be a string")
    elif kind == "carousel":
        items = _list(payload.get("items"), f"{where}.items")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or item.get("type") != "card":
                raise InvalidPayloadError(f"{where}.items[{i}].type must be 'card'")
            validate_payload(item, f"{where}.items[{i}]")
    elif kind == "bloc":
        items = _list(payload.get("items"), f"{where}.items")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or item.get("type") not in _BLOC_ITEM_TYPES:
                raise InvalidPayloadError(
                    f"{where}.items[{i}].type must be one of {sorted(_BLOC_ITEM_TYPES)}"
                )
            validate_payload(item, f"{where}.items[{i}]")
    return payload


def _nonempty_str(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidPayloadError(f"{where} must be a non-empty string")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidPayloadError(f"{where} must be an array")
    return value


def _validate_options(value: Any, where: str) -> None:
    for i, opt in enumerate(_list(value, where)):
        if not isinstance(opt, dict):
            raise InvalidPayloadError(f"{where}[{i}] must be an object")
        _nonempty_str(opt.get("label"), f"{where}[{i}].label")
        _nonempty_str(opt.get("value"), f"{where}[{i}].value")


def _validate_actions(value: Any, where: str) -> None:
    for i, act in enumerate(_list(value, where)):
        if not isinstance(act, dict):
            raise InvalidPayloadError(f"{where}[{i}] must be an object")
        if act.get("action") not in _CARD_ACTIONS:
            raise InvalidPayloadError(f"{where}[{i}].action must be one of {sorted(_CARD_ACTIONS)}")
        _nonempty_str(act.get("label"), f"{where}[{i}].label")
        _nonempty_str(act.get("value"), f"{where}[{i}].value")


def payload_text(payload: dict[str, Any]) -> str:
    """The words a bot 'hears' in a user payload (text, markdown, choice value...)."""
    kind = payload.get("type")
    if kind == "text":
        return str(payload.get("text", ""))
    if kind == "markdown":
        return str(payload.get("markdown", ""))
    if kind in ("choice", "dropdown"):
        return str(payload.get("text", ""))
    if kind == "bloc":
        return " ".join(payload_text(i) for i in payload.get("items", []) if isinstance(i, dict))
    return ""
