"""The generation settings as one observable model; the prompt panel's widgets bind to it.

Every setting of a `GenerationRequest` except its images and guides lives here, with the request's own defaults
(request.py defines each once), plus some of the UI's own: a new seed on every run, the recently opened models, and
which guides are on at what strength (the window builds the request's `guides` from these and the canvas's
layers). Settings arrive from widgets (`bind`), from a PNG's `parameters`, a saved run, the autosave or QSettings
(`apply`, which checks each value and skips what it cannot use), and leave as a request (`to_request`) or a dict
(`to_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QPlainTextEdit, QSpinBox, QWidget

from ..engine import GUIDE_KINDS, REFERENCE_VARIANTS, GenerationRequest, classifier_labels, suggested_strength
from .choices import BUILTIN_MODELS, SAMPLERS, default_eta, supports_karras

MAX_SEED = 2**32 - 1  # A1111 and ComfyUI seeds fit; the engine takes up to 2^63 − 1
# the canvas supplies these per run; they are not settings (each guide's on/strength/variant is: GUIDE_SETTINGS)
IMAGE_FIELDS = ("init_image", "mask", "guides")


@dataclass(frozen=True)
class Limits:
    lo: float
    hi: float
    decimals: int = 0  # 0: a whole number


# The ranges the controls offer (the engine itself accepts wider ones); `apply` clamps into them.
LIMITS: dict[str, Limits] = {
    "steps": Limits(1, 1000),
    "eta": Limits(0.0, 1.0, 2),
    "cfg": Limits(0.0, 30.0, 1),
    "seed": Limits(0, MAX_SEED),
    "width": Limits(64, 4096),
    "height": Limits(64, 4096),
    "clip_skip": Limits(1, 12),
    "strength": Limits(0.01, 1.0, 2),
    "feather": Limits(0.0, 128.0, 1),
    "grow": Limits(0, 128),
    "padding": Limits(0, 512),
    "guide_steps": Limits(0.05, 1.0, 2),
    "backward_steps": Limits(1, 50),
    "recurrence": Limits(1, 10),
    "cold_noise": Limits(0.0, 0.1, 3),
}


# Read from a default request, not the dataclass fields: the request resolves some (eta from its sampler).
_DEFAULT_REQUEST = GenerationRequest()
REQUEST_DEFAULTS: dict[str, Any] = {
    f.name: getattr(_DEFAULT_REQUEST, f.name)
    for f in dataclasses.fields(GenerationRequest) if f.name not in IMAGE_FIELDS
}
UI_DEFAULTS: dict[str, Any] = {"random_each": False, "recent_models": ()}


def _default_strength(kind: str) -> float:
    """The engine's tuned strength of a guide kind in the request's default guide mode and recurrence."""
    return float(suggested_strength(kind, REQUEST_DEFAULTS["guide_mode"], REQUEST_DEFAULTS["recurrence"]))


# guides whose measured best strength depends on the guide mode and the recurrence (engine.suggested_strength)
MODE_DEPENDENT_GUIDES = ("classifier", "clip")
_GUIDE_STRENGTH_KINDS = {f"guide_{kind}_strength": kind for kind in MODE_DEPENDENT_GUIDES}


# Each guide of universal guidance: on or off and its strength (a reference also its variant). Not request fields:
# the request's `guides` pairs these with the pictures (the canvas's hint and keep layers, the reference picture).
GUIDE_SETTINGS: dict[str, Any] = {}
for _kind in GUIDE_KINDS:
    GUIDE_SETTINGS[f"guide_{_kind}_on"] = False
    GUIDE_SETTINGS[f"guide_{_kind}_strength"] = _default_strength(_kind)
GUIDE_SETTINGS["guide_reference_variant"] = REFERENCE_VARIANTS[0]
# The classifier guide (classifier guidance, issue #15): on, strength, and per label group of the shipped scene
# classifier the value asked for ("" = any). Groups and values come from the classifier's file header (no torch).
CLASSIFIER_LABELS: dict[str, tuple[str, ...]] = classifier_labels()
GUIDE_SETTINGS["guide_classifier_on"] = False
GUIDE_SETTINGS["guide_classifier_strength"] = _default_strength("classifier")
for _group in CLASSIFIER_LABELS:
    GUIDE_SETTINGS[f"guide_classifier_{_group}"] = ""
# The CLIP guide (CLIP guidance, issue #15): on, strength and the caption the picture should match.
GUIDE_SETTINGS["guide_clip_on"] = False
GUIDE_SETTINGS["guide_clip_strength"] = _default_strength("clip")
GUIDE_SETTINGS["guide_clip_text"] = ""
UI_DEFAULTS.update(GUIDE_SETTINGS)
# ranges of the UI's own settings (LIMITS and CHOICES list the request's: a request has each of those)
UI_LIMITS: dict[str, Limits] = {f"guide_{kind}_strength": Limits(0.0, 1000.0, 2)
                                for kind in (*GUIDE_KINDS, "classifier", "clip")}
UI_CHOICES: dict[str, tuple] = {"guide_reference_variant": tuple(REFERENCE_VARIANTS)} | {
    f"guide_classifier_{group}": ("", *values) for group, values in CLASSIFIER_LABELS.items()}
NATIVE_INPAINT_STRENGTH = 1.0  # what inpainting with a 9-channel inpainting model starts from (A1111, InvokeAI)
DEFAULTS: dict[str, Any] = {**REQUEST_DEFAULTS, **UI_DEFAULTS}


def _literal_choices() -> dict[str, tuple]:
    """The allowed values of every request field typed as a Literal (sampler, device, dtype, fill, …)."""
    hints = typing.get_type_hints(GenerationRequest)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is typing.Literal}


CHOICES: dict[str, tuple] = {**_literal_choices(), "sampler": tuple(SAMPLERS)}


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a switch is not a number")
    number = float(value)  # numbers and numeric text; anything else raises
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()  # QSettings' ini files give back "true" / "false"
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a switch: {value!r}")


def coerce(name: str, value: Any) -> Any:
    """`value` as setting `name` holds it: clamped into its limits, rounded to its decimals; ValueError if unusable."""
    default = DEFAULTS[name]
    choices = CHOICES.get(name) or UI_CHOICES.get(name)
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{name} cannot be {value!r}")
        return value
    if name == "recent_models":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError("recent models are a list of paths")
        return tuple(dict.fromkeys(str(path) for path in value if path))
    if isinstance(default, bool):
        return _switch(value)
    if isinstance(default, (int, float)):
        limits = LIMITS.get(name) or UI_LIMITS.get(name)
        number = _number(value)
        if limits is not None:
            number = min(max(number, limits.lo), limits.hi)
        if isinstance(default, int):
            return int(round(number))
        return round(number, limits.decimals if limits is not None else 4)
    if isinstance(default, str):
        if not isinstance(value, str) or (name == "model" and not value):
            raise ValueError(f"{name} must be text")
        return value
    return value


class GenerationSettings(QObject):
    """Read a setting as an attribute (`settings.steps`); change it with `settings.steps = 30` or `set`."""

    changed = Signal(str, object)  # setting name, new value

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._values: dict[str, Any] = dict(DEFAULTS)
        # True while the guidance scale is the loaded model's recommendation; any other change is the user's choice.
        self.cfg_follows_model = True
        self._following_model_cfg = False
        # True while the strength is the task's default (1 for a model that inpaints natively, else the request's);
        # once the user sets one, it stays theirs
        self.strength_follows_task = True
        self._following_task_strength = False
        # per guide kind: True while its strength is the suggestion for the guide mode and recurrence (it follows
        # them); once the user, a restored run or a branch sets one, it stays theirs
        self.guide_strength_follows = dict.fromkeys(MODE_DEPENDENT_GUIDES, True)
        self._following_guide_strength = False

    def get(self, name: str) -> Any:
        return self._values[name]

    def set(self, name: str, value: Any) -> None:
        """Raises KeyError for an unknown setting and ValueError for an unusable value."""
        if name not in self._values:
            raise KeyError(name)
        value = coerce(name, value)
        if self._values[name] == value:
            return
        self._values[name] = value
        if name == "cfg" and not self._following_model_cfg:
            self.cfg_follows_model = False
        if name == "strength" and not self._following_task_strength:
            self.strength_follows_task = False
        if name in _GUIDE_STRENGTH_KINDS and not self._following_guide_strength:
            self.guide_strength_follows[_GUIDE_STRENGTH_KINDS[name]] = False
        self.changed.emit(name, value)
        self._follow(name, value)

    def _follow(self, name: str, value: Any) -> None:
        """Settings that depend on the one just changed."""
        if name == "sampler":
            self.set("eta", default_eta(value))
            if not supports_karras(value):
                self.set("karras", False)
        elif name in ("guide_mode", "recurrence"):
            self._follow_guide_strengths()
        elif name in ("model", "recent_models"):
            self._list_current_model()
            if name == "model":
                self.set("prediction", REQUEST_DEFAULTS["prediction"])  # a property of the file: detect it anew

    def _list_current_model(self) -> None:
        model, recent = self._values["model"], self._values["recent_models"]
        if model not in BUILTIN_MODELS and model not in recent:
            self.set("recent_models", (model, *recent))

    def apply(self, settings: Mapping[str, Any]) -> list[str]:
        """Set every known setting `settings` names; returns the names whose values were unusable (and skipped).

        Settings are applied in field order, so a sampler comes before its eta and a model before its prediction:
        a value given for the dependent one wins over the default the first one brings."""
        rejected = []
        for name in self._values:
            if name in settings:
                try:
                    self.set(name, settings[name])
                except (TypeError, ValueError):
                    rejected.append(name)
        if "guides" in settings:
            try:
                self.apply_guides(settings["guides"])
            except (TypeError, ValueError, KeyError):
                rejected.append("guides")
        return rejected

    def apply_guides(self, guides: Any) -> None:
        """A request's guides (`Guide`s, or their `settings()` dicts from a run file, PNG or autosave): the kinds
        listed are switched on at their strength (a reference with its variant), the others off."""
        if isinstance(guides, (str, bytes, Mapping)):
            raise ValueError("guides are a list")
        listed = {}
        for guide in guides:
            values = guide.settings() if hasattr(guide, "settings") else dict(guide)
            kind = values["kind"]
            if kind not in (*GUIDE_KINDS, "classifier", "clip"):
                raise ValueError(f"unknown guide {kind!r}")
            listed[kind] = values
        self.set("guide_clip_on", "clip" in listed)
        if "clip" in listed:
            self.set("guide_clip_strength", listed["clip"].get("strength", DEFAULTS["guide_clip_strength"]))
            self.set("guide_clip_text", str(listed["clip"].get("text") or ""))
        self.set("guide_classifier_on", "classifier" in listed)
        if "classifier" in listed:
            self.set("guide_classifier_strength", listed["classifier"].get("strength",
                                                                         DEFAULTS["guide_classifier_strength"]))
            labels = dict(listed["classifier"].get("labels") or {})
            for group in CLASSIFIER_LABELS:
                self.set(f"guide_classifier_{group}", labels.get(group, ""))
        for kind in GUIDE_KINDS:
            self.set(f"guide_{kind}_on", kind in listed)
            if kind in listed:
                self.set(f"guide_{kind}_strength", listed[kind].get("strength", DEFAULTS[f"guide_{kind}_strength"]))
        if "reference" in listed and "variant" in listed["reference"]:
            self.set("guide_reference_variant", listed["reference"]["variant"])

    def to_dict(self) -> dict[str, Any]:
        values = dict(self._values)
        values["recent_models"] = list(values["recent_models"])
        if self.strength_follows_task:  # the task's strength is not the user's: a restored session chooses anew
            values["strength"] = REQUEST_DEFAULTS["strength"]
        return values

    def to_request(self, **overrides: Any) -> GenerationRequest:
        values = {name: self._values[name] for name in REQUEST_DEFAULTS}
        values.update(overrides)
        return GenerationRequest(**values)

    def _follow_guide_strengths(self) -> None:
        """The classifier and CLIP guides' suggested strengths for the new mode or recurrence, unless chosen."""
        self._following_guide_strength = True
        try:
            for kind, follows in self.guide_strength_follows.items():
                if follows:
                    self.set(f"guide_{kind}_strength",
                             suggested_strength(kind, self._values["guide_mode"], self._values["recurrence"]))
        finally:
            self._following_guide_strength = False

    def follow_model_cfg(self, cfg: float) -> None:
        """The loaded model's recommended guidance scale, unless the user has chosen one."""
        if self.cfg_follows_model:
            self._following_model_cfg = True
            try:
                self.set("cfg", cfg)
            finally:
                self._following_model_cfg = False


    def follow_inpaint_strength(self, native_inpainting: bool) -> None:
        """Strength 1 while inpainting with a model that inpaints natively (A1111 and InvokeAI use the whole
        schedule with inpainting models: their 9-channel UNet sees the masked picture and needs no half-noised
        copy of it), the request's default otherwise; unless the user has chosen a strength."""
        if self.strength_follows_task:
            self._following_task_strength = True
            try:
                self.set("strength", NATIVE_INPAINT_STRENGTH if native_inpainting else REQUEST_DEFAULTS["strength"])
            finally:
                self._following_task_strength = False


class _Setting:
    """`settings.<name>` reads the value; assigning to it goes through `set` (checked, signalled)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, settings: GenerationSettings | None, owner: type) -> Any:
        return self if settings is None else settings.get(self.name)

    def __set__(self, settings: GenerationSettings, value: Any) -> None:
        settings.set(self.name, value)


for _name in DEFAULTS:
    assert not hasattr(GenerationSettings, _name), f"setting {_name!r} would hide a method"
    setattr(GenerationSettings, _name, _Setting(_name))


# -- binding widgets ---------------------------------------------------------------------------------------------------
class Binding(QObject):
    """Keeps one widget showing one setting, both ways. A child of the widget: it goes when the widget goes.

    A guard stops the widget's own change signal from echoing a value the model has just written."""

    def __init__(self, settings: GenerationSettings, name: str, widget: QWidget,
                 read: Callable[[], Any], write: Callable[[Any], None], signal: Any):
        super().__init__(widget)
        self._settings, self._name, self._read, self._write = settings, name, read, write
        self._writing = False
        signal.connect(self._from_widget)
        settings.changed.connect(self._from_model)
        self._from_model(name, settings.get(name))

    def _from_widget(self, *_: Any) -> None:
        if self._writing:
            return
        try:
            self._settings.set(self._name, self._read())
        except ValueError:  # the widget holds what the model refuses: show the model's value again
            self._from_model(self._name, self._settings.get(self._name))

    def _from_model(self, name: str, value: Any) -> None:
        if name != self._name or self._read() == value:
            return
        self._writing = True
        try:
            self._write(value)
        finally:
            self._writing = False


def _select_data(combo: QComboBox, value: Any) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def bind(settings: GenerationSettings, name: str, widget: QWidget) -> Binding:
    """Two-way binding of setting `name` to a spin box, a combo box (by item data), a check box or a text edit."""
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        return Binding(settings, name, widget, widget.value, widget.setValue, widget.valueChanged)
    if isinstance(widget, QComboBox):
        return Binding(settings, name, widget, widget.currentData, lambda v: _select_data(widget, v),
                       widget.currentIndexChanged)
    if isinstance(widget, QCheckBox):
        return Binding(settings, name, widget, widget.isChecked, widget.setChecked, widget.toggled)
    if isinstance(widget, QPlainTextEdit):
        return Binding(settings, name, widget, widget.toPlainText, widget.setPlainText, widget.textChanged)
    if isinstance(widget, QLineEdit):
        return Binding(settings, name, widget, widget.text, widget.setText, widget.textChanged)
    raise TypeError(f"cannot bind {type(widget).__name__}")
