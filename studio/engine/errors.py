"""The one error type whose message is meant for the user.

Anything raised as a `UserError` (or a subclass) is shown as is: one sentence, no traceback, in the CLI and the
app alike. Every other exception is a bug: the CLI and the app log its traceback and say "internal error" with
where the log is. Deliberately *not* a ValueError subclass, so a ValueError from a bug is never mistaken for a
user's mistake.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can act on; `str(error)` is one clear sentence."""
