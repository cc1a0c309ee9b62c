"""Which environment variables each process reads, found in its settings code (never a list).

The settings modules read the environment only through `shared.config.Env`
(`env.int("NAME", default, ...)`, `env.secret("NAME")`, ...) and through helpers of
shared/config.py that take an Env (`redis_url(env)` reads REDIS_URL). Parsing those calls with
`ast` gives every variable without running anything, so a setting that is added or renamed shows
up here at once: devstack forwards it to the processes it starts, and tests/test_deploy.py checks
the deploy files against it.

The scan is deliberately loose: any call whose function is an attribute named like one of Env's
read methods, on any receiver, with a string literal first argument, counts. A name built at run
time (an f-string, a variable) cannot be seen; tests/test_deploy.py runs the settings against a
recording environment to prove nothing is missed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.config import Env

ROOT = Path(__file__).resolve().parents[1]
CONFIG_MODULE = ROOT / "shared" / "config.py"
SETTINGS_MODULES = {
    "edge": ROOT / "edge" / "settings.py",
    "worker": ROOT / "worker" / "settings.py",
}
ROLES = tuple(SETTINGS_MODULES)

# Env's public methods, each one a typed read of one variable (str, int, float, bool, choice,
# optional_str, secret, url, raw, and whatever is added later).
READ_METHODS = frozenset(
    name for name, value in vars(Env).items() if callable(value) and not name.startswith("_")
)
SECRET_METHOD = "secret"  # also reads NAME_FILE (a mounted secret)
SECRET_FILE = "secret_file"  # the method recorded for those NAME_FILE variables


@dataclass(frozen=True)
class EnvRead:
    """One `<receiver>.<method>("NAME", default?, ...)` call in `path`."""

    method: str
    name: str
    default: ast.expr | None
    path: Path


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def env_reads_in(tree: ast.AST, path: Path) -> Iterator[EnvRead]:
    """Every Env read with a literal variable name in `tree` (parsed from `path`)."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in READ_METHODS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            default = node.args[1] if len(node.args) > 1 else None
            yield EnvRead(node.func.attr, node.args[0].value, default, path)


def _called_names(tree: ast.AST) -> set[str]:
    """Names of the functions called in `tree` (`f(...)` and `module.f(...)`)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                out.add(node.func.id)
            elif isinstance(node.func, ast.Attribute):
                out.add(node.func.attr)
    return out


def _config_helpers() -> dict[str, tuple[EnvRead, ...]]:
    """Module-level functions of shared/config.py -> the variables each reads (with the helpers
    it calls in turn), e.g. redis_url -> REDIS_URL."""
    tree = _parse(CONFIG_MODULE)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    direct: dict[str, list[EnvRead]] = {}
    calls: dict[str, set[str]] = {}
    for name, fn in functions.items():
        direct[name] = list(env_reads_in(fn, CONFIG_MODULE))
        calls[name] = _called_names(fn) & set(functions)
    out: dict[str, tuple[EnvRead, ...]] = {}
    for name in functions:
        seen, todo, reads = {name}, [name], []
        while todo:
            current = todo.pop()
            reads += direct[current]
            for callee in calls[current] - seen:
                seen.add(callee)
                todo.append(callee)
        out[name] = tuple(reads)
    return out


def env_reads(role: str) -> list[EnvRead]:
    """The reads of the role's settings module, plus those of the shared/config.py helpers it
    calls (redis_url(env) -> REDIS_URL)."""
    path = SETTINGS_MODULES[role]
    tree = _parse(path)
    reads = list(env_reads_in(tree, path))
    helpers = _config_helpers()
    for name in sorted(_called_names(tree) & set(helpers)):
        reads += helpers[name]
    return reads


def variable_methods(role: str) -> dict[str, str]:
    """NAME -> the Env method reading it, for every variable the role reads; a secret's
    NAME_FILE is listed too (as "secret_file")."""
    found: dict[str, str] = {}
    for read in env_reads(role):
        found[read.name] = read.method
        if read.method == SECRET_METHOD:
            found[f"{read.name}_FILE"] = SECRET_FILE
    return found


def variables_read(role: str) -> set[str]:
    """Every variable the role ("edge" or "worker") reads, NAME_FILE of secrets included."""
    return set(variable_methods(role))


def all_variables() -> set[str]:
    """Every variable the edge or a worker reads."""
    return set().union(*(variables_read(role) for role in ROLES))
