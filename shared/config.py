"""Strict environment parsing shared by every process's settings object.

Each process builds one typed settings object at its entry point from these helpers. A bad value
raises ConfigError naming the variable, and the entry point turns that into one clear line and
exit code 2. Secrets may come from `NAME_FILE` (Docker/Kubernetes secret mounts).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Secret:
    """A string that never prints itself (repr/str show a mask)."""

    value: str

    def __repr__(self) -> str:
        return "Secret('**********')" if self.value else "Secret('')"

    __str__ = __repr__


class Env:
    """Typed reads from an environment mapping; every error names its variable."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if environ is None else environ

    def raw(self, name: builtins.str) -> builtins.str | None:
        value = self._env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def str(
        self, name: builtins.str, default: builtins.str | None = None, *, keep_empty: bool = False
    ) -> builtins.str:
        """`keep_empty`: a variable set to nothing (`NAME=`) reads as "", not as the default."""
        value = self.raw(name)
        if value is None and keep_empty and self._env.get(name) is not None:
            return ""
        if value is None:
            if default is None:
                raise ConfigError(f"{name} is required")
            return default
        return value

    def choice(
        self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]
    ) -> builtins.str:
        value = self.str(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def optional_str(self, name: builtins.str) -> builtins.str | None:
        return self.raw(name)

    def secret(self, name: builtins.str, required: bool = True) -> Secret:
        value = self.raw(name)
        file_name = self.raw(f"{name}_FILE")
        if value is None and file_name is not None:
            try:
                with open(file_name, encoding="utf-8") as f:
                    value = f.read().strip()
            except OSError as exc:
                raise ConfigError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from exc
        if not value:
            if required:
                raise ConfigError(f"{name} (or {name}_FILE) is required")
            return Secret("")
        return Secret(value)

    def int(
        self,
        name: builtins.str,
        default: int,
        *,
        min_value: int | None = None,
        max_value: int | None = None,
    ) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if min_value is not None and parsed < min_value:
            raise ConfigError(f"{name} must be >= {min_value}, got {parsed}")
        if max_value is not None and parsed > max_value:
            raise ConfigError(f"{name} must be <= {max_value}, got {parsed}")
        return parsed

    def float(
        self,
        name: builtins.str,
        default: float,
        *,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if min_value is not None and parsed < min_value:
            raise ConfigError(f"{name} must be >= {min_value}, got {parsed}")
        if max_value is not None and parsed > max_value:
            raise ConfigError(f"{name} must be <= {max_value}, got {parsed}")
        return parsed

    def bool(self, name: builtins.str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def url(
        self,
        name: builtins.str,
        default: builtins.str | None = None,
        *,
        schemes: tuple[builtins.str, ...] = ("http", "https"),
    ) -> builtins.str:
        value = self.str(name, default)
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.netloc:
            raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, got {value!r}")
        return value


def redis_url(env: Env) -> builtins.str:
    return env.url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "unix"))
