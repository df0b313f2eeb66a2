import signal

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication


def test_run_app_shows_the_window_on_a_qasync_loop_and_returns_when_it_closes(monkeypatch, tmp_path):
    from studio.ui.app import run_app
    from studio.ui.main_window import MainWindow

    monkeypatch.setenv("STUDIO_AUTOSAVE_DIR", str(tmp_path / "autosave"))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen = []

    def close_the_window():
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        seen.extend(windows)
        for window in windows:
            window.close()

    QTimer.singleShot(300, close_the_window)
    try:
        assert run_app() == 0
    finally:
        signal.set_wakeup_fd(-1)
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert len(seen) == 1 and not seen[0].worker.is_alive()
    assert (tmp_path / "autosave" / "current" / "session.json").exists()
