"""Cold models in the app: listed when shipped, and the sampler box offers only the samplers a model runs with."""

from studio.engine import ModelInfo, ModelProbed, shipped_cold_models
from studio.ui.choices import BUILTIN_MODELS, LDM_SAMPLERS


def cold_info(spec):
    return ModelInfo(spec=spec, label="Cold", default_size=64, size_multiple=64, default_cfg=1.0, prediction="x0",
                     inpaints_natively=False, latent_channels=3, vae_factor=1, family="cold",
                     samplers=("cold_improved", "cold_naive"))


def shown(combo):
    return [combo.itemData(i) for i in range(combo.count()) if not combo.view().isRowHidden(i)]


def test_shipped_cold_models_are_in_the_model_list(window):
    assert set(shipped_cold_models()) <= set(BUILTIN_MODELS)
    combo = window.prompt_panel.model
    specs = [combo.itemData(i) for i in range(combo.count())]
    assert all(spec in specs for spec in shipped_cold_models())


def test_a_cold_model_offers_only_the_cold_samplers_and_back(window):
    panel = window.prompt_panel
    spec = panel.model_spec()
    assert window.prompt_panel.settings_model.sampler in LDM_SAMPLERS
    window._probe_job = 77
    window._on_model_probed(ModelProbed(77, cold_info(spec)))
    assert shown(panel.sampler) == ["cold_improved", "cold_naive"]
    assert window.prompt_panel.settings_model.sampler == "cold_improved" and panel.cold_noise.isEnabled()
    assert not panel.cfg.isEnabled() and not panel.clip_skip.isEnabled()  # a cold model uses neither
    guidable = ModelInfo(**{**cold_info(spec).__dict__, "default_cfg": 2.0})  # trained with caption dropout
    window._on_model_probed(ModelProbed(77, guidable))
    assert panel.cfg.isEnabled() and not panel.clip_skip.isEnabled()
    plain = ModelInfo(spec=spec, label="x", default_size=64, size_multiple=4, default_cfg=3.0, prediction="v",
                      inpaints_natively=True, latent_channels=4, vae_factor=4)
    window._on_model_probed(ModelProbed(77, plain))
    assert shown(panel.sampler) == list(LDM_SAMPLERS) and window.prompt_panel.settings_model.sampler == "ddim"
    assert not panel.cold_noise.isEnabled() and panel.cfg.isEnabled() and panel.clip_skip.isEnabled()


def test_a_cold_run_captions_its_views_as_cold_diffusion(window, qtbot):
    """Picked from the model list as a user does, a cold model runs and the timeline names x_s, R(x_s, s), the
    correction and the degradation level; a latent-diffusion run afterwards gets its own captions back."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QLabel, QPushButton

    combo, panel = window.prompt_panel.model, window.prompt_panel
    index = combo.findData("cold-blur")
    combo.setCurrentIndex(index)
    combo.activated.emit(index)
    qtbot.waitUntil(lambda: window.engine_label.text().startswith("Model ready: Cold"), timeout=60000)
    assert panel.settings_model.sampler == "cold_improved"
    panel.steps.setValue(4)
    with qtbot.waitSignal(window.controller.finished, timeout=120000):
        QTest.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)
    timeline = window.timeline
    assert "degraded" in window.findChild(QLabel, "xtCaption").text()
    assert "correction" in window.findChild(QLabel, "epsCaption").text()
    assert window.findChild(QLabel, "levelPlotCaption").text().startswith("degradation level")
    step_text = timeline.step_label.text().replace("\xa0", " ")
    assert "level = " in step_text and "σ" not in step_text
    assert timeline.plot.symbol == "level"  # the plot's marked step says "level = …", not σ
    assert timeline.plot.toolTip().startswith("Degradation level")
    assert [round(v, 6) for v in timeline.plot.sigmas[:1]] == [0.9]  # cold-blur's generation starts at s0 = 36 of 40
    index = combo.findData("tiny-random")
    combo.setCurrentIndex(index)
    combo.activated.emit(index)
    qtbot.waitUntil(lambda: window.engine_label.text().startswith("Model ready: tiny"), timeout=60000)
    with qtbot.waitSignal(window.controller.finished, timeout=120000):
        QTest.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)
    assert "noisy latent" in window.findChild(QLabel, "xtCaption").text()
    assert timeline.plot.symbol == "σ" and timeline.plot.toolTip().startswith("Noise level σ")
    assert window.findChild(QLabel, "levelPlotCaption").text() == "noise level σ per step"


def test_a_model_restored_without_the_model_box_is_probed_too(window, qtbot):
    """Settings brought back from a PNG, a history entry or an autosave may name a cold model: its samplers must
    follow it as if the user had picked it."""
    panel = window.prompt_panel
    qtbot.waitUntil(lambda: window.engine_label.text().startswith("Model ready"), timeout=60000)
    panel.settings_model.apply({"model": "cold-blur", "sampler": "ddim"})
    qtbot.waitUntil(lambda: window.engine_label.text().startswith("Model ready: Cold"), timeout=60000)
    assert panel.settings_model.sampler == "cold_improved" and shown(panel.sampler) == ["cold_improved", "cold_naive"]
    panel.settings_model.apply({"model": "tiny-random"})
    qtbot.waitUntil(lambda: window.engine_label.text().startswith("Model ready: tiny"), timeout=60000)
    assert shown(panel.sampler) == list(LDM_SAMPLERS) and panel.settings_model.sampler in LDM_SAMPLERS
