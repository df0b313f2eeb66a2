import subprocess
import sys
from pathlib import Path

from PySide6.QtWidgets import QWidget

from studio.ui.choices import SAMPLERS, USES_ETA

REQUIRED_NAMES = [
    "promptEdit", "negativePromptEdit", "modelCombo", "samplerCombo", "stepsSpin", "etaSpin", "cfgSpin", "seedSpin",
    "widthSpin", "heightSpin", "strengthSpin", "featherSpin", "brushSizeSpin", "generateButton", "cancelButton",
    "maskCanvas", "timelineSlider", "xtView", "x0View", "epsView", "branchButton", "historyList", "messageBar",
    "progressBar", "decodeStepButton", "playButton", "invertButton", "beforeAfterButton", "useAsInputButton",
    "deviceCombo", "dtypeCombo", "randomSeedButton", "growSpin", "onlyMaskedCheck", "paddingSpin", "fillCombo",
    "sigmaPlot", "exportTimelineButton", "undoButton", "redoButton", "clearMaskButton", "invertMaskButton",
    "maskOpacitySlider", "showFeatheredCheck", "brushButton", "eraserButton",
]


def test_every_interactive_widget_has_a_stable_object_name(window):
    missing = [name for name in REQUIRED_NAMES if window.findChild(QWidget, name) is None]
    assert not missing


def test_model_combo_lists_builtin_models_and_open_checkpoint(window):
    combo = window.prompt_panel.model
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert labels[0] == "Built-in shapes model" and "tiny-random (test)" in labels
    assert any(label.startswith("Open checkpoint") for label in labels)
    window.use_model("/models/my-model.safetensors")
    assert window.prompt_panel.model_spec() == "/models/my-model.safetensors"
    assert "/models/my-model.safetensors" in window.settings.value("models/recent")


def test_eta_is_enabled_only_for_samplers_that_use_it(window):
    panel = window.prompt_panel
    assert "0 = deterministic DDIM" in panel.eta.toolTip() and "DDPM" in panel.eta.toolTip()
    for key in SAMPLERS:
        panel.sampler.setCurrentIndex(panel.sampler.findData(key))
        assert panel.eta.isEnabled() == (key in USES_ETA)


def test_ui_choices_match_the_engine():
    from studio.engine.samplers import SAMPLER_TABLE

    assert SAMPLERS == {name: spec.display_name for name, spec in SAMPLER_TABLE.items()}
    assert USES_ETA == {name for name, spec in SAMPLER_TABLE.items() if spec.uses_eta}


def test_the_ui_thread_never_imports_torch():
    code = ("import os, sys; os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
            "from PySide6.QtWidgets import QApplication; app = QApplication([])\n"
            "import studio.ui.main_window, studio.ui.app\n"
            "assert 'torch' not in sys.modules, 'torch imported on the UI thread'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=Path(__file__).resolve().parents[2])


def test_message_bar_levels_and_actions(window):
    bar = window.message_bar
    clicked = []
    bar.error("Something broke", actions=[("Retry", lambda: clicked.append(1))])
    assert bar.isVisible() and bar.text() == "Something broke"
    bar.action_buttons()[0].click()
    assert clicked == [1] and not bar.isVisible()


def test_message_bar_buttons_are_readable_on_every_level(window):
    """The bar draws light text on a dark band; its buttons draw their own light face, so their labels must not
    take the bar's light text colour (the Restore / Discard buttons of a saved session were blank)."""
    from PySide6.QtGui import QPalette

    bar = window.message_bar
    for show in (bar.info, bar.success, bar.warning, bar.error):
        show("A question", actions=[("Restore", lambda: None), ("Discard", lambda: None)])
        for button in bar.action_buttons():
            palette = button.palette()
            text, face = (palette.color(QPalette.ColorRole.ButtonText), palette.color(QPalette.ColorRole.Button))
            assert abs(text.lightnessF() - face.lightnessF()) > 0.4, (show.__name__, button.text())
        bar.dismiss()


def test_cfg_follows_the_model_until_the_user_chooses_one(qtbot, tmp_path):
    import dataclasses

    import torch

    from PySide6.QtCore import Qt

    from studio.engine.loading import load_model, save_studio_file
    from studio.ui import MainWindow

    model = load_model("tiny-random", torch.device("cpu"), torch.float32)
    model.config = dataclasses.replace(model.config, default_cfg=2.5, name="low-cfg")
    path = tmp_path / "low-cfg.safetensors"
    save_studio_file(model, path)

    window = MainWindow(autosave_dir=tmp_path / "autosave")
    qtbot.addWidget(window)
    window.show()
    panel = window.prompt_panel
    window.use_model(str(path))
    qtbot.waitUntil(lambda: panel.cfg.value() == 2.5, timeout=20000)  # the model's recommendation

    edit = panel.cfg.lineEdit()  # the user types 5 into the CFG box
    edit.selectAll()
    qtbot.keyClicks(edit, "5")
    qtbot.keyClick(edit, Qt.Key.Key_Return)
    assert panel.cfg.value() == 5.0
    window.use_model("tiny-random")  # recommends SD's 7.5, but the user's 5 stays
    qtbot.waitUntil(lambda: window.engine_label.text().startswith("Model ready: tiny-random"), timeout=20000)
    assert panel.cfg.value() == 5.0
    window.close()
