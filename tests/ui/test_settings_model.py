"""The generation settings model and the prompt panel bound to it: defaults, both binding directions, restores."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox, QLineEdit, QPlainTextEdit

from studio.engine import GenerationRequest, format_parameters, parse_parameters
from studio.ui.choices import SAMPLERS, USES_ETA, default_eta
from studio.ui.prompt_panel import PromptPanel
from studio.ui.prompt_sections import OPEN_FILE
from studio.ui.settings_model import CHOICES, DEFAULTS, IMAGE_FIELDS, LIMITS, MAX_SEED, GenerationSettings, bind

UI_DIR = Path(__file__).resolve().parents[2] / "studio" / "ui"
MAX_FUNCTION_LINES = 60

# Every setting a control shows: (panel attribute, a value other than the default). `model` has its own tests;
# `prediction` is detected from the model file and has no control.
CONTROLS = {
    "prompt": ("prompt", "a red circle on grey"),
    "negative_prompt": ("negative", "blurry"),
    "read_prompt": ("read_prompt", False),
    "sampler": ("sampler", "dpmpp_2m"),
    "karras": ("karras", True),
    "steps": ("steps", 42),
    "eta": ("eta", 0.35),
    "cfg": ("cfg", 4.5),
    "seed": ("seed", 3_000_000_000),  # past a 32-bit int
    "width": ("width_spin", 640),
    "height": ("height_spin", 384),
    "clip_skip": ("clip_skip", 2),
    "device": ("device", "cpu"),
    "dtype": ("dtype", "fp32"),
    "strength": ("strength", 0.5),
    "feather": ("feather", 8.0),
    "grow": ("grow", 3),
    "inpaint_mode": ("inpaint_mode", "blend"),
    "only_masked": ("only_masked", True),
    "padding": ("padding", 16),
    "fill": ("fill", "noise"),
    "paste_back": ("paste_back", False),
    "random_each": ("random_each", True),
    "cold_noise": ("cold_noise", 0.01),
    # universal guidance (the Guidance section): the request's scalar settings, then each guide's on/strength
    "guide_mode": ("guide_mode", "both"),
    "guide_steps": ("guide_steps", 0.5),
    "backward_steps": ("backward_steps", 3),
    "recurrence": ("recurrence", 2),
    "guide_in_mask": ("guide_in_mask", True),
    "guide_colour_on": ("colour_guide", True),
    "guide_colour_strength": ("colour_strength", 25.0),
    "guide_reference_on": ("reference_guide", True),
    "guide_reference_strength": ("reference_strength", 2.5),
    "guide_reference_variant": ("reference_variant", "palette"),
    "guide_keep_on": ("keep_guide", True),
    "guide_keep_strength": ("keep_strength", 4.0),
    "guide_classifier_on": ("classifier_guide", True),
    "guide_classifier_strength": ("classifier_strength", 7.5),
    **{f"guide_{group}": (group, value) for group, value in (  # the shipped classifier's groups (issue #15)
        ("classifier_shape", "star"), ("classifier_colour", "red"), ("classifier_size", "small"),
        ("classifier_position", "top left"), ("classifier_background", "blue")) if f"guide_{group}" in DEFAULTS},
    "guide_clip_on": ("clip_guide", True),
    "guide_clip_strength": ("clip_strength", 30.0),
    "guide_clip_text": ("clip_text", "a red star at the top"),
}
WITHOUT_CONTROL = {"model", "prediction", "recent_models"}


@pytest.fixture
def panel(qtbot):
    panel = PromptPanel()
    qtbot.addWidget(panel)
    return panel


def shown(widget):
    if isinstance(widget, QAbstractSpinBox):
        return widget.value()
    if isinstance(widget, QComboBox):
        return widget.currentData()
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QLineEdit):
        return widget.text()
    return widget.toPlainText()


def edit_as_user(qtbot, widget, value):
    if isinstance(widget, QAbstractSpinBox):
        widget.setValue(value)
    elif isinstance(widget, QComboBox):
        widget.setCurrentIndex(widget.findData(value))
    elif isinstance(widget, QCheckBox):
        if widget.isChecked() != value:
            widget.click()
    elif isinstance(widget, (QPlainTextEdit, QLineEdit)):
        widget.clear()
        qtbot.keyClicks(widget, value)


# -- defaults ------------------------------------------------------------------------------------------------------
def test_defaults_are_the_requests_own():
    settings, request = GenerationSettings(), GenerationRequest()
    for field in dataclasses.fields(GenerationRequest):
        if field.name not in IMAGE_FIELDS:
            assert settings.get(field.name) == getattr(request, field.name), field.name
    assert settings.to_request() == request


def test_the_panel_starts_at_the_defaults(panel):
    assert panel.request() == GenerationRequest()
    for name, (attribute, _) in CONTROLS.items():
        assert shown(getattr(panel, attribute)) == DEFAULTS[name], name


def test_every_setting_has_a_control_or_is_listed_without_one():
    assert set(CONTROLS) | WITHOUT_CONTROL == set(DEFAULTS)


# -- binding both ways ---------------------------------------------------------------------------------------------
def test_each_control_sets_the_request(panel, qtbot):
    for name, (attribute, value) in CONTROLS.items():
        with qtbot.waitSignal(panel.changed):
            edit_as_user(qtbot, getattr(panel, attribute), value)
        assert panel.settings_model.get(name) == value, name
        if name in GenerationRequest.__dataclass_fields__:
            assert getattr(panel.request(), name) == value, name


def test_applied_settings_show_in_every_control(panel):
    values = {name: value for name, (_, value) in CONTROLS.items()}
    assert panel.settings_model.apply(values) == []
    for name, (attribute, value) in CONTROLS.items():
        assert shown(getattr(panel, attribute)) == value, name
    assert all(panel.settings()[name] == value for name, value in values.items())


def test_one_edit_is_one_change_with_no_echo(panel):
    seen = []
    panel.settings_model.changed.connect(lambda name, value: seen.append((name, value)))
    panel.steps.setValue(12)
    panel.prompt.setPlainText("a star")
    panel.settings_model.cfg = 3.5
    assert seen == [("steps", 12), ("prompt", "a star"), ("cfg", 3.5)]
    assert panel.cfg.value() == 3.5


def test_bind_keeps_a_fresh_widget_and_the_model_in_step(qtbot):
    from PySide6.QtWidgets import QLineEdit

    settings = GenerationSettings()
    edit = QLineEdit()
    qtbot.addWidget(edit)
    bind(settings, "prompt", edit)
    settings.prompt = "from the model"
    assert edit.text() == "from the model"
    edit.setText("from the widget")
    assert settings.prompt == "from the widget"


def test_a_binding_lives_as_long_as_its_widget(qtbot):
    import gc

    import shiboken6
    from PySide6.QtWidgets import QSpinBox

    settings = GenerationSettings()
    spin = QSpinBox()
    spin.setRange(1, 1000)
    bind(settings, "steps", spin)  # nothing in Python holds the binding
    gc.collect()
    settings.steps = 9
    assert spin.value() == 9
    shiboken6.delete(spin)
    settings.steps = 12  # no call into the deleted widget
    assert settings.steps == 12


def test_model_choice_from_the_combo_and_from_outside(panel, qtbot):
    combo = panel.model
    index = combo.findData("tiny-random")
    with qtbot.waitSignal(panel.modelChanged) as blocker:
        combo.setCurrentIndex(index)
        combo.activated.emit(index)
    assert blocker.args == ["tiny-random"] and panel.request().model == "tiny-random"
    with qtbot.waitSignal(panel.openCheckpointRequested):
        open_index = combo.findData(OPEN_FILE)
        combo.setCurrentIndex(open_index)
        combo.activated.emit(open_index)
    assert combo.currentData() == "tiny-random" and panel.model_spec() == "tiny-random"
    panel.set_model("/models/mine.safetensors")
    assert combo.currentText() == "mine.safetensors" and panel.model_name() == "mine.safetensors"
    assert panel.recent_models() == ["/models/mine.safetensors"]
    panel.set_recent_models(["/models/other.ckpt"])  # the current model stays listed
    assert panel.recent_models() == ["/models/mine.safetensors", "/models/other.ckpt"]


def test_devices_keep_the_choice_when_available(panel):
    panel.settings_model.device = "cuda"
    panel.set_devices(["auto", "cpu", "cuda"])
    assert panel.device.currentData() == "cuda" and panel.request().device == "cuda"
    panel.set_devices(["auto", "cpu"])
    assert panel.device.currentData() == "auto" and panel.request().device == "auto"


# -- samplers --------------------------------------------------------------------------------------------------------
def test_a_sampler_switch_brings_its_eta_and_enables_the_eta_box(panel):
    for name in SAMPLERS:
        panel.sampler.setCurrentIndex(panel.sampler.findData(name))
        assert panel.settings_model.eta == default_eta(name) == panel.eta.value()
        assert panel.eta.isEnabled() == (name in USES_ETA) == panel.eta_label.isEnabled()
    assert default_eta("euler_a") == 1.0 and default_eta("ddim") == 0.0


def test_an_eta_given_with_the_sampler_wins_over_its_default():
    settings = GenerationSettings()
    settings.apply({"sampler": "euler_a", "eta": 0.3})
    assert (settings.sampler, settings.eta) == ("euler_a", 0.3)
    settings.apply({"sampler": "ddim"})
    assert settings.eta == 0.0


# -- restoring --------------------------------------------------------------------------------------------------------
def test_png_parameters_round_trip(panel):
    original = GenerationRequest(
        prompt="a blue star, centred", negative_prompt="blurry", model="tiny-random", sampler="euler_a", karras=True,
        steps=33, eta=0.5, cfg=6.5, seed=123456789, width=640, height=448, clip_skip=2, strength=0.6, feather=6.0,
        init_image=np.zeros((8, 8, 3), np.uint8), mask=np.ones((8, 8), np.float32))
    parsed = parse_parameters(format_parameters(original))
    panel.apply_settings(parsed)
    assert panel.request(init_image=original.init_image, mask=original.mask) == original
    fresh = GenerationSettings()
    assert fresh.apply(parsed) == []
    assert fresh.to_request() == original


def test_qsettings_round_trip(panel):
    panel.settings_model.apply({name: value for name, (_, value) in CONTROLS.items()})
    panel.set_model("/models/mine.safetensors")
    store = QSettings()
    store.setValue("generation/settings", json.dumps(panel.settings()))
    store.setValue("generation/randomEachRun", panel.settings_model.random_each)
    store.sync()
    restored = GenerationSettings()
    restored.apply(json.loads(str(QSettings().value("generation/settings"))))
    restored.apply({"random_each": QSettings().value("generation/randomEachRun")})  # an ini file gives back text
    assert restored.to_dict() == panel.settings()


def test_autosave_round_trip(panel, tmp_path):
    from studio.ui.autosave import Autosave, read_session

    panel.settings_model.apply({name: value for name, (_, value) in CONTROLS.items()})
    autosave = Autosave(tmp_path)
    autosave.save_state(settings=panel.settings(), image=None, mask=None, result=None, run_ids=[], selected=None)
    session = read_session(autosave.current)
    restored = GenerationSettings()
    assert restored.apply(session.settings) == []
    assert restored.to_dict() == panel.settings()


def test_the_size_is_kept_when_asked_or_when_an_image_sets_it(panel):
    panel.apply_settings({"width": 320, "height": 256}, size=False)
    assert panel.generation_size() == (512, 512)
    panel.set_image_mode(True, (300, 200))
    panel.apply_settings({"width": 320, "height": 256})
    assert panel.generation_size() == (300, 200) == (panel.width_spin.value(), panel.height_spin.value())
    assert not panel.width_spin.isEnabled() and panel.strength.isEnabled() and panel.inpaint_box.isEnabled()


def test_size_boxes_step_by_the_size_multiple(panel):
    panel.set_size(200, 300)
    panel.set_size_multiple(64)
    assert panel.width_spin.singleStep() == 64 and panel.generation_size() == (192, 320)
    panel.set_size_multiple(8)
    panel.set_size(203, 101)
    panel.width_spin.editingFinished.emit()
    assert panel.generation_size() == (200, 104)


# -- unusable values ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values, expected", [
    ({"steps": "many"}, {"steps": 25}),
    ({"steps": -5}, {"steps": 1}),
    ({"steps": "12"}, {"steps": 12}),
    ({"steps": 7.6}, {"steps": 8}),
    ({"cfg": float("nan"), "eta": float("inf")}, {"cfg": 7.5, "eta": 0.0}),
    ({"seed": -1}, {"seed": 0}),
    ({"seed": 2**40}, {"seed": MAX_SEED}),
    ({"sampler": "k_lms", "device": "tpu", "fill": None}, {"sampler": "ddim", "device": "auto", "fill": "original"}),
    ({"width": "512px", "height": 10}, {"width": 512, "height": 64}),
    ({"karras": "true", "paste_back": "false", "only_masked": "maybe"}, {"karras": True, "paste_back": False,
                                                                        "only_masked": False}),
    ({"prompt": 5, "model": "", "recent_models": "one path"}, {"prompt": "", "model": "default", "recent_models": ()}),
    ({"hires_fix": True, "init_image": [1, 2]}, {}),
])
def test_unusable_values_are_clamped_or_skipped(values, expected):
    settings = GenerationSettings()
    settings.apply(values)
    for name, value in expected.items():
        assert settings.get(name) == value, name
    settings.to_request()


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(DEFAULTS)), st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.lists(st.text(max_size=4)))))
def test_any_settings_dict_leaves_a_valid_request(values):
    settings = GenerationSettings()
    settings.apply(values)
    request = settings.to_request()
    for name, limits in LIMITS.items():
        value = getattr(request, name)
        assert limits.lo <= value <= limits.hi and math.isfinite(value), name
    for name, choices in CHOICES.items():
        assert getattr(request, name) in choices, name


def test_cfg_follows_the_model_until_the_user_picks_one():
    settings = GenerationSettings()
    settings.follow_model_cfg(2.5)
    assert settings.cfg == 2.5 and settings.cfg_follows_model
    settings.cfg = 5.0
    settings.follow_model_cfg(7.5)
    assert settings.cfg == 5.0


# -- shape of the code ----------------------------------------------------------------------------------------------
def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    functions = (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return [f"{path.name}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)" for f in functions
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_ui_function_is_over_60_lines():
    offenders = [line for path in sorted(UI_DIR.glob("*.py")) for line in long_functions(path)]
    assert not offenders
