"""Work-arounds for the Qt binding, applied once when `studio.ui` is imported.

PySide6 6.12 on CPython 3.11 returns `None` from every void method without taking a reference to it
(`return Py_None;` instead of `Py_RETURN_NONE`), so each call such as `painter.setPen(…)` or
`slider.setValue(…)` drops None's reference count by one; after some minutes of painting it reaches zero and the
interpreter aborts with "none_dealloc: deallocating None". Python 3.12 made None immortal (PEP 683), which
hides the bug there. On 3.11 we do the same by hand: give None a reference count no session can use up.
"""

from __future__ import annotations

import sys

_HEADROOM = 1 << 52  # at a million leaked references per second this lasts ~140 years


def immortalize_none() -> bool:
    """Raise None's reference count out of reach on CPython < 3.12; True when it was done."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    import ctypes

    refcount = ctypes.c_ssize_t.from_address(id(None))  # ob_refcnt is PyObject's first field (non-debug builds)
    if abs(refcount.value - (sys.getrefcount(None) - 1)) > 8:  # not the layout we expect: leave it alone
        return False
    if refcount.value < _HEADROOM:
        refcount.value += _HEADROOM
    return True
