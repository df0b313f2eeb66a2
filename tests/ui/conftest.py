"""UI test fixtures: a private QSettings location and autosave folder per test, a shared tiny-random model, and a
check after every test that no window or engine thread was left behind (napari's make_napari_viewer does the same).
"""

from __future__ import annotations

import threading
import uuid


import pytest
from PySide6.QtCore import QCoreApplication, QSettings, QStandardPaths

from PySide6.QtWidgets import QApplication




@pytest.fixture(autouse=True)
def private_settings(tmp_path):
    """QSettings and QStandardPaths that can never touch the user's real ones."""
    QStandardPaths.setTestModeEnabled(True)
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    QCoreApplication.setOrganizationName(f"StudioTest-{uuid.uuid4().hex[:8]}")
    QCoreApplication.setApplicationName("Diffusion Studio Test")
    yield


@pytest.fixture(autouse=True)
def no_leaks(qapp):
    """After each test: no engine thread alive and no top-level window still visible."""
    before = set(threading.enumerate())
    yield
    for _ in range(3):
        QApplication.processEvents()
    leaked_threads = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked_threads, f"threads left running: {leaked_threads}"
    assert not any(t.name == "studio-engine" for t in threading.enumerate())
    visible = [w for w in QApplication.topLevelWidgets() if w.isVisible()]
    for widget in visible:
        widget.close()
    assert not visible, f"windows left open: {visible}"


_model_cache: dict = {}


def cached_loader(spec, device, dtype):
    """The engine's real loader, with the tiny-random model built once per test session (it is read-only)."""
    from studio.engine.loading import load_model

    if spec != "tiny-random":
        return load_model(spec, device, dtype)
    key = (spec, str(device), str(dtype))
    if key not in _model_cache:
        _model_cache[key] = load_model(spec, device, dtype)
    return _model_cache[key]


def make_engine():
    from studio.engine import Engine

    return Engine(loader=cached_loader, decode_steps=True)  # as the app's LocalBackend makes it


def make_backend():
    from studio.engine import LocalBackend

    return LocalBackend(make_engine)


@pytest.fixture
def make_window(qtbot, tmp_path):
    """Build MainWindows on tiny-random at 64×64; every one is closed (and its worker joined) afterwards."""
    from studio.ui import MainWindow

    windows = []

    def make(autosave_dir=None, **kwargs):
        window = MainWindow(autosave_dir=autosave_dir or tmp_path / "autosave", backend_factory=make_backend, **kwargs)
        qtbot.addWidget(window)
        panel = window.prompt_panel
        panel.set_model("tiny-random")
        panel.width_spin.setValue(64)
        panel.height_spin.setValue(64)
        panel.steps.setValue(6)
        panel.cfg.setValue(3.0)
        panel.prompt.setPlainText("a red circle")
        window.resize(1280, 860)
        window.show()
        qtbot.waitExposed(window)
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()
        assert not window.worker.is_alive()


@pytest.fixture
def window(make_window):
    return make_window()
