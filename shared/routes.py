"""ROUTES_FILE: several numbers, several bots — the file's one parser and the route names.

A TOML file maps our number (E.164) to the settings its calls get:

    [default]                        # optional: numbers not listed below
    botpress_webhook_id = "main-bot"
    [numbers."+14155550100"]
    botpress_webhook_id = "sales-bot"
    voice = "Polly.Lupe"
    language = "es-US"
    transfer_targets = { sales = "+14155550123" }

There is one validator, not two: each key stands for the environment variable of the same name
(ROUTE_KEYS), and each process builds a route's settings by running its own `from_env` on the
environment with the route's values laid over it. This module only checks the file's shape
(TOML, E.164 numbers, known keys, value types) and turns values into variable strings; a bad
value is refused by the same code that refuses it in the environment. Every error is one
ConfigError naming the file and the entry, which the entry points print as one line (exit 2).

Route names, which the edge puts in TurnRequest.route and the worker looks up: "default", and
each number itself ("+14155550100"). Without a file there is one route, "default": the
environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from shared.config import ConfigError

DEFAULT_ROUTE = "default"
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")

#: What a route may set, each key as the variable it overrides: only per-call settings (the
#: bot, its voice and words, its timing). Process settings (ports, Redis, Twilio's account,
#: PUBLIC_URL) are the environment's alone.
ROUTE_KEYS: Mapping[str, str] = {
    # The bot (worker).
    "botpress_webhook_id": "BOTPRESS_WEBHOOK_ID",
    "botpress_chat_url": "BOTPRESS_CHAT_URL",
    "botpress_encryption_key": "BOTPRESS_ENCRYPTION_KEY",
    "opening_text": "OPENING_TEXT",
    "opening_mode": "OPENING_MODE",
    "fallback_phrase": "FALLBACK_PHRASE",
    "bot_timeout_ms": "BOT_TIMEOUT_MS",
    "bot_quiet_ms": "BOT_QUIET_MS",
    # The call (edge).
    "enabled": "ENABLED",
    "voice": "VOICE",
    "language": "LANGUAGE",
    "voices": "VOICES",
    "voice_mode": "VOICE_MODE",
    "relay_tts_provider": "RELAY_TTS_PROVIDER",
    "relay_voice": "RELAY_VOICE",
    "relay_transcription_provider": "RELAY_TRANSCRIPTION_PROVIDER",
    "timeout": "TIMEOUT",
    "speech_timeout": "SPEECH_TIMEOUT",
    "reply_deadline_ms": "REPLY_DEADLINE_MS",
    "max_silent_turns": "MAX_SILENT_TURNS",
    "hold_wait_ms": "HOLD_WAIT_MS",
    "gather_input": "GATHER_INPUT",
    "finish_on_key": "FINISH_ON_KEY",
    "dtmf_pause_ms": "DTMF_PAUSE_MS",
    "transfer_targets": "TRANSFER_TARGETS",
    "reprompt_phrase": "REPROMPT_PHRASE",
    "hold_phrase": "HOLD_PHRASE",
    "goodbye_phrase": "GOODBYE_PHRASE",
    "unavailable_phrase": "UNAVAILABLE_PHRASE",
    "trouble_phrase": "TROUBLE_PHRASE",
    "transfer_refused_phrase": "TRANSFER_REFUSED_PHRASE",
}
#: Keys given as a table, written as the variable's `NAME=VALUE,...` list.
_TABLE_KEYS = frozenset({"voices", "transfer_targets"})
#: A route that names its own bot inherits none of the environment's bot variables: another
#: bot's encryption key (or URL) must never sign for this one.
_BOT_VARIABLES = (
    "BOTPRESS_WEBHOOK_ID",
    "BOTPRESS_CHAT_URL",
    "BOTPRESS_ENCRYPTION_KEY",
    "BOTPRESS_ENCRYPTION_KEY_FILE",
)
_NAMES_BOT = frozenset({"botpress_webhook_id", "botpress_chat_url"})

S = TypeVar("S")


@dataclass(frozen=True)
class RouteTable:
    """The routes of one file: route name -> the variables it sets (file order kept)."""

    path: str
    overrides: Mapping[str, Mapping[str, str]]

    def environ(self, route: str, base: Mapping[str, str]) -> dict[str, str]:
        """`base` (the process's environment, ROUTES_FILE dropped) with the route's values."""
        env = {k: v for k, v in base.items() if k != "ROUTES_FILE"}
        values = self.overrides[route]
        if any(ROUTE_KEYS[key] in values for key in _NAMES_BOT):
            for name in _BOT_VARIABLES:
                env.pop(name, None)
        env.update(values)
        return env

    def build(
        self, parse: Callable[[Mapping[str, str]], S], base: Mapping[str, str] | None = None
    ) -> dict[str, S]:
        """Each route's settings, parsed by the process's own `parse` (its from_env); a value it
        refuses is a ConfigError naming the file and the entry."""
        environ = os.environ if base is None else base
        built: dict[str, S] = {}
        for route in self.overrides:
            try:
                built[route] = parse(self.environ(route, environ))
            except ConfigError as exc:
                raise ConfigError(f"ROUTES_FILE {self.path}: {_entry(route)}: {exc}") from None
        return built


def load_routes(path: str) -> RouteTable:
    """Reads and checks ROUTES_FILE (its shape: values are the settings code's to check)."""

    def fail(entry: str, problem: str) -> ConfigError:
        where = f"{entry}: " if entry else ""
        return ConfigError(f"ROUTES_FILE {path}: {where}{problem}")

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise fail("", f"cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise fail("", f"not valid TOML: {exc}") from None
    overrides: dict[str, dict[str, str]] = {}
    for top, value in data.items():
        if top == DEFAULT_ROUTE:
            overrides[DEFAULT_ROUTE] = _values(f"[{DEFAULT_ROUTE}]", value, fail)
        elif top == "numbers":
            if not isinstance(value, dict):
                raise fail("numbers", 'want tables: [numbers."+14155550100"]')
            for number, entry in value.items():
                if not _E164.match(number):
                    raise fail(_entry(number), "not an E.164 number (+14155550100)")
                overrides[number] = _values(_entry(number), entry, fail)  # named by itself
        else:
            raise fail(f"[{top}]", 'unknown table: want [default] and [numbers."+1..."]')
    if not overrides:
        raise fail("", 'no routes: want [default] and/or [numbers."+1..."] tables')
    return RouteTable(path, overrides)


def _entry(route: str) -> str:
    return f"[{route}]" if route == DEFAULT_ROUTE else f'[numbers."{route}"]'


def _values(entry: str, table: object, fail: Callable[[str, str], ConfigError]) -> dict[str, str]:
    if not isinstance(table, dict):
        raise fail(entry, "want a table of settings")
    out: dict[str, str] = {}
    for key, value in table.items():
        if key not in ROUTE_KEYS:
            raise fail(entry, f"unknown key {key!r} (known: {', '.join(sorted(ROUTE_KEYS))})")
        out[ROUTE_KEYS[key]] = _as_variable(entry, key, value, fail)
    return out


def _as_variable(
    entry: str, key: str, value: object, fail: Callable[[str, str], ConfigError]
) -> str:
    """A TOML value as its variable would be written."""
    if key in _TABLE_KEYS:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise fail(entry, f'{key}: want a table of strings ({key} = {{ name = "..." }})')
        for name, item in value.items():
            if "," in name or "=" in name or "," in item:
                raise fail(entry, f"{key}: bad entry {name!r}")
        return ",".join(f"{name}={item}" for name, item in value.items())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if key == "finish_on_key" and value == "":
            return ""
        if not value.strip():
            raise fail(entry, f"{key}: empty")
        return value
    raise fail(
        entry, f"{key}: want a string, a whole number or true/false, got {type(value).__name__}"
    )
