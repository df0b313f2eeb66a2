"""`studio` with no arguments opens the desktop app; `studio COMMAND …` is the command line."""

from __future__ import annotations

import os
import sys

from .process_env import runtime_defaults

runtime_defaults(os.environ)  # before torch loads (process_env.py)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        from .ui.app import run_app

        return run_app()
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
