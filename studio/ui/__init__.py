"""The PySide6 desktop app. `MainWindow` is imported lazily so `import studio.ui` stays cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .main_window import MainWindow

__all__ = ["MainWindow", "run_app"]


def __getattr__(name: str) -> Any:
    if name == "MainWindow":
        from .main_window import MainWindow

        return MainWindow
    if name == "run_app":
        from .app import run_app

        return run_app
    raise AttributeError(name)
