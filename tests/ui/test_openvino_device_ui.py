"""The Device box offers OpenVINO where it is installed, and a generation on it works like one on the CPU."""

from __future__ import annotations

import numpy as np
from ui_helpers import GENERATION_TIMEOUT_MS


def test_a_user_picks_openvino_in_the_device_box_and_generates(window, qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    combo = window.findChild(type(window.prompt_panel.device), "deviceCombo")
    qtbot.waitUntil(lambda: combo.findData("openvino") >= 0, timeout=GENERATION_TIMEOUT_MS)
    assert combo.itemText(combo.findData("openvino")) == "CPU (OpenVINO)"

    with qtbot.waitSignal(window.controller.finished, timeout=GENERATION_TIMEOUT_MS):
        window.generate()
    on_cpu = window.history.selected

    combo.setCurrentIndex(combo.findData("openvino"))
    combo.activated.emit(combo.currentIndex())
    assert window.build_request().device == "openvino"
    with qtbot.waitSignal(window.controller.finished, timeout=4 * GENERATION_TIMEOUT_MS):
        window.generate()
    on_openvino = window.history.selected
    assert on_openvino is not on_cpu and on_openvino.request.device == "openvino"
    # the same seed and settings: the same picture, up to float32 summation order
    difference = np.abs(on_openvino.image.astype(int) - on_cpu.image.astype(int))
    assert difference.max() <= 2
