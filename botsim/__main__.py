"""`python -m botsim --host 127.0.0.1 --port 3100 [...]`; see botsim/README.md."""

from __future__ import annotations

from .config import BotsimConfig
from .server import run


def main(argv: list[str] | None = None) -> None:
    run(BotsimConfig.from_argv(argv))


if __name__ == "__main__":
    main()
