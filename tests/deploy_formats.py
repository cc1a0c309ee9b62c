"""Readers for the deploy files' formats, as far as tests/test_deploy.py needs them.

- Dockerfile: instructions (comments dropped, `\\` continuations joined), the final stage, the
  exec (JSON) form, a stage's ENV;
- .dockerignore: whether a path of the build context is excluded (Docker's last-match-wins, `!`
  exceptions, a directory pattern excluding what is under it);
- compose interpolation: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
  `${NAME:?error}`, `${NAME?error}` (an error raises KeyError, as compose refuses to start);
- dotenv: `NAME=value` lines, and the `# NAME=value` lines that document a default.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from pathlib import Path

Instruction = tuple[str, str]  # (KEYWORD, the rest of the line)


# --- Dockerfile --------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[Instruction]:
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += (" " if current else "") + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions from the last FROM on."""
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"use the exec (JSON) form: {rest}"
    return value


def stage_env(stage: list[Instruction]) -> dict[str, str]:
    """NAME -> value of the stage's `ENV NAME=value ...` instructions."""
    env = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for pair in re.findall(r"(\w+)=(\S+)", rest):
                env[pair[0]] = pair[1]
    return env


# --- .dockerignore -----------------------------------------------------------------------------
def dockerignored(dockerignore: Path, relpath: str) -> bool:
    ignored = False
    for raw in dockerignore.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = relpath.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", ""))
            for p in prefixes
        ):
            ignored = not negate
    return ignored


# --- compose interpolation and dotenv ------------------------------------------------------------
_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in env
        empty = not env.get(name)
        if op in (":-", "-") and (empty if op == ":-" else not present):
            return arg
        if op in (":?", "?") and (empty if op == ":?" else not present):
            raise KeyError(f"{name}: {arg}")
        return env.get(name, "")

    return _INTERPOLATION.sub(one, value)


def dotenv(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(active NAME=value lines, commented `# NAME=value` lines)."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            assert m.group(1) not in active, f"{m.group(1)} twice"
            active[m.group(1)] = m.group(2).strip().strip("'\"")
        elif m := re.fullmatch(r"#\s?([A-Z][A-Z0-9_]*)=(.*)", line):
            commented[m.group(1)] = m.group(2).strip()
    return active, commented
