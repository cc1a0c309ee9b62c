"""`python -m callsim load`: placeholder until load mode lands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TextIO


def add_load_parser(sub: Any, add_target_args: Callable[[argparse.ArgumentParser], None]) -> None:
    load = sub.add_parser("load", help="many concurrent calls (not yet implemented)")
    add_target_args(load)


def run_load_command(args: argparse.Namespace, out: TextIO) -> int:
    raise SystemExit("load mode is not implemented yet")
