"""Start the desktop app: QApplication + qasync's event loop, the theme, the main window."""

from __future__ import annotations

import asyncio
import sys

ORGANIZATION = "DiffusionStudio"
APPLICATION = "Diffusion Studio"


async def _main_window_session() -> int:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow
    from .theme import apply_theme

    app = QApplication.instance()
    apply_theme(str(QSettings().value("view/theme", "dark")))
    window = MainWindow()
    closed = asyncio.Event()
    app.lastWindowClosed.connect(closed.set)
    window.show()
    await closed.wait()
    return 0


def run_app(argv: list[str] | None = None) -> int:
    """Build the QApplication and run the window on a qasync loop until it closes; the exit status."""
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication
    import qasync

    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    app = QApplication.instance() or QApplication(sys.argv if argv is None else argv)
    app.setApplicationDisplayName(APPLICATION)
    app.setDesktopFileName("diffusion-studio")
    try:
        return qasync.run(_main_window_session())
    except asyncio.CancelledError:
        return 0
