"""The one error type whose message is meant for the user.

Anything raised as a `UserError` (or a subclass) is shown as is: one sentence, no traceback, in the CLI and the
app alike. Every other exception is a bug: the CLI and the app log its traceback and say "internal error" with
where the log is. Deliberately *not* a ValueError subclass, so a ValueError from a bug is never mistaken for a
user's mistake.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path


class UserError(Exception):
    """A failure the user can act on; `str(error)` is one clear sentence."""


def log_file() -> Path:
    """Where tracebacks of internal errors go: $XDG_STATE_HOME/diffusion-studio/studio.log (~/.local/state/…)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "diffusion-studio" / "studio.log"


def report_internal_error(exc: BaseException, doing: str, echo: bool = True) -> str:
    """Log `exc` with its traceback to `log_file()` (and to stderr when `echo`) and return the one line to show."""
    path = log_file()
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"--- {stamp} internal error while {doing}\n{text}\n")
        where = f"details in {path}"
    except OSError:
        where = "details on the terminal (the log file could not be written)"
    if echo:
        print(f"studio: internal error while {doing}\n{text}", file=sys.stderr)
    return f"internal error while {doing}: {type(exc).__name__}: {exc} ({where})"
