"""The real app on the real X11 (xcb) platform: window shown, one generation finished, clean exit.

The offscreen tests cannot see a missing system library of Qt's xcb plugin (it is never loaded there), so CI runs
this under Xvfb as well:  xvfb-run -a python tests/xcb_smoke.py
Exit code 0 on success; otherwise one line on stderr says what failed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    if not os.environ.get("DISPLAY"):
        print("xcb smoke test: no DISPLAY; run it under xvfb-run", file=sys.stderr)
        return 2
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    home = tempfile.mkdtemp(prefix="studio-xcb-")
    os.environ["XDG_CONFIG_HOME"] = os.environ["XDG_STATE_HOME"] = home  # never the user's settings or log

    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    QCoreApplication.setOrganizationName("StudioXcbSmoke")
    if app.platformName() != "xcb":
        print(f"xcb smoke test: Qt chose the {app.platformName()!r} platform, not xcb", file=sys.stderr)
        return 1
    from studio.ui import MainWindow

    window = MainWindow(autosave_dir=Path(home) / "autosave", offer_restore=False)
    panel = window.prompt_panel
    panel.set_model("tiny-random")
    panel.width_spin.setValue(64)
    panel.height_spin.setValue(64)
    panel.steps.setValue(4)
    panel.prompt.setPlainText("a red circle")
    window.show()
    finished: list[object] = []
    window.controller.finished.connect(finished.append)
    if not _pump(app, window.isVisible, 30):
        print("xcb smoke test: the window was never shown", file=sys.stderr)
        return 1
    if not _pump(app, lambda: "ready" in window.engine_label.text().lower(), 120):
        print(f"xcb smoke test: the engine did not come up ({window.engine_label.text()})", file=sys.stderr)
        return 1
    window.generate()
    if not _pump(app, lambda: bool(finished) or window.message_bar.isVisible() and not window.controller.running, 300):
        print("xcb smoke test: the generation did not finish in time", file=sys.stderr)
        return 1
    if not finished:
        print(f"xcb smoke test: the generation failed: {window.message_bar.text()}", file=sys.stderr)
        return 1
    window.close()
    app.processEvents()
    if window.worker.is_alive():
        print("xcb smoke test: the engine thread outlived the window", file=sys.stderr)
        return 1
    print(f"xcb smoke test: window shown on {app.platformName()}, a 4-step generation finished, clean exit")
    return 0


def _pump(app, done, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        if done():
            return True
        time.sleep(0.01)
    return False


if __name__ == "__main__":
    sys.exit(main())
