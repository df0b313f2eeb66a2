"""`studio` with no arguments opens the desktop app; `studio COMMAND …` is the command line."""

from __future__ import annotations

import os
import sys

# OpenMP threads that finish a parallel region early spin-wait for the others (libgomp's default). On a desktop the
# cores are shared, so a descheduled sibling leaves the spinner burning its core: measured on 2 cores beside busy
# processes, an SD UNet step took 2.0-2.8x the wall time and twice the CPU time of the same step with passive
# waiting (docs/numerics.md, "Threads on a shared CPU"). Set before torch loads its OpenMP runtime; a user's own
# setting wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        from .ui.app import run_app

        return run_app()
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
