"""Start the desktop app: QApplication + qasync's event loop, the theme, the main window.

Ctrl+C and SIGTERM close the window the orderly way (the run is cancelled, the worker joined, the session saved):
the C-level signal handler writes to a socket that a QSocketNotifier watches, so the Python handler runs promptly
even while the loop sits in Qt's C++ code.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

ORGANIZATION = "DiffusionStudio"
APPLICATION = "Diffusion Studio"


def _close_on_signals(app, window) -> None:
    from PySide6.QtCore import QSocketNotifier

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    try:
        signal.set_wakeup_fd(writer.fileno())
    except ValueError:  # not the main thread: leave signals alone
        return
    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read, app)

    def drain() -> None:
        try:
            reader.recv(64)
        except OSError:
            pass

    notifier.activated.connect(drain)
    app._signal_sockets = (reader, writer, notifier)  # keep them alive with the app
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: window.close())


async def _main_window_session() -> int:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow
    from .theme import apply_theme

    app = QApplication.instance()
    apply_theme(str(QSettings().value("view/theme", "dark")))
    window = MainWindow()
    closed = asyncio.Event()
    window.closed.connect(closed.set)
    _close_on_signals(app, window)
    window.show()
    await closed.wait()
    return 0


def run_app(argv: list[str] | None = None) -> int:
    """Build the QApplication and run the window on a qasync loop until it closes; the exit status."""
    import qasync
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication

    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    app = QApplication.instance() or QApplication(sys.argv if argv is None else argv)
    app.setApplicationDisplayName(APPLICATION)
    app.setDesktopFileName("diffusion-studio")
    try:
        return qasync.run(_main_window_session())
    except (asyncio.CancelledError, KeyboardInterrupt):
        return 0
