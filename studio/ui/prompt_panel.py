"""The generation controls: prompt, model, sampler, size, img2img, inpainting and guidance options, Generate / Cancel.

Every control is bound to one `GenerationSettings` (`panel.settings_model`); the panel makes requests from it and
knows nothing about images or the engine thread. The sections live in prompt_sections.py (guidance in
guidance_section.py).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from ..engine import GenerationRequest
from .choices import model_label
from .guidance_section import GuidanceSection
from .prompt_sections import (
    SIZE_MULTIPLE,
    InpaintSection,
    ModelSection,
    PromptSection,
    RunButtons,
    SamplingSection,
    SizeSection,
)
from .settings_model import GenerationSettings

SIZE_SETTINGS = ("width", "height")
MASK_SETTINGS = ("feather", "grow")
PROMPT_ROOM = 48  # px the prompt boxes may grow past their minimum; the options below scroll


class PromptPanel(QWidget):
    generateRequested = Signal()
    cancelRequested = Signal()
    openCheckpointRequested = Signal(bool)  # True: a diffusers folder, False: a checkpoint file
    modelChanged = Signal(str)  # the user picked another model
    sizeChanged = Signal(int, int)
    inpaintOptionsChanged = Signal()  # feather or grow; the canvas shows the feathered mask
    changed = Signal()  # any setting; for autosave

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("promptPanel")
        self.settings_model = GenerationSettings(self)
        self.prompt_section = PromptSection(self.settings_model)
        self.model_section = ModelSection(self.settings_model)
        self.sampling_section = SamplingSection(self.settings_model)
        self.size_section = SizeSection(self.settings_model)
        self.inpaint_section = InpaintSection(self.settings_model)
        self.guidance_section = GuidanceSection(self.settings_model)
        self.run_buttons = RunButtons()
        self._lay_out()
        self._name_controls()
        self._connect()
        self.setMinimumWidth(300)

    def _lay_out(self) -> None:
        body = QWidget()
        body_layout = QVBoxLayout(body)
        body_layout.setContentsMargins(0, 0, 4, 0)
        body_layout.setSpacing(8)
        for section in (self.model_section, self.sampling_section, self.size_section, self.inpaint_section,
                        self.guidance_section):
            body_layout.addWidget(section)
        body_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setObjectName("promptScroll")
        scroll.setWidget(body)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # with no horizontal scroll bar, settings wider than the dock were cut off on the right (opening Guidance
        # did it): the scroll area asks for the settings' own minimum width, so the dock makes room for them
        self._scroll, self._body = scroll, body
        body.installEventFilter(self)
        self._fit_settings_width()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(6)
        # the prompt stays in view above the scrolling options: scrolling down to the inpainting options (the first
        # stroke does) never hides what the user types next
        self.prompt_section.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.prompt_section.setMaximumHeight(self.prompt_section.minimumSizeHint().height() + PROMPT_ROOM)
        layout.addWidget(self.prompt_section)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.run_buttons)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self._body and event.type() == QEvent.Type.LayoutRequest:
            self._fit_settings_width()
        return False

    def _fit_settings_width(self) -> None:
        bar = self._scroll.verticalScrollBar().sizeHint().width()
        self._scroll.setMinimumWidth(self._body.minimumSizeHint().width() + bar)

    def _name_controls(self) -> None:
        """The controls under the names they have always had here (tests and scripts reach them so)."""
        prompt, model, sampling = self.prompt_section, self.model_section, self.sampling_section
        size, inpaint, run = self.size_section, self.inpaint_section, self.run_buttons
        self.prompt, self.negative, self.read_prompt = prompt.prompt, prompt.negative, prompt.read_prompt
        self.model, self.device, self.dtype = model.model, model.device, model.dtype
        self.sampler, self.karras, self.steps = sampling.sampler, sampling.karras, sampling.steps
        self.eta, self.eta_label, self.cfg = sampling.eta, sampling.eta_label, sampling.cfg
        self.seed, self.random_seed, self.random_each = sampling.seed, sampling.random_seed, sampling.random_each
        self.clip_skip, self.cold_noise = sampling.clip_skip, sampling.cold_noise
        self.width_spin, self.height_spin, self.size_label = size.width_spin, size.height_spin, size.size_label
        self.strength = size.strength
        self.inpaint_box = inpaint
        self.feather, self.grow, self.only_masked = inpaint.feather, inpaint.grow, inpaint.only_masked
        self.padding, self.fill = inpaint.padding, inpaint.fill
        self.inpaint_mode, self.paste_back = inpaint.inpaint_mode, inpaint.paste_back
        self.generate_button, self.cancel_button = run.generate_button, run.cancel_button
        self.mode_label, self.progress = run.mode_label, run.progress
        self._name_guidance_controls()

    def _name_guidance_controls(self) -> None:
        guidance = self.guidance_section
        self.guide_mode, self.guide_steps = guidance.guide_mode, guidance.guide_steps
        self.backward_steps, self.recurrence, self.guide_in_mask = (guidance.backward_steps, guidance.recurrence,
                                                                    guidance.guide_in_mask)
        self.colour_guide, self.colour_strength = guidance.colour_check, guidance.colour_strength
        self.reference_guide, self.reference_strength = guidance.reference_check, guidance.reference_strength
        self.reference_variant = guidance.reference_variant
        self.keep_guide, self.keep_strength = guidance.keep_check, guidance.keep_strength
        self.classifier_guide, self.classifier_strength = guidance.classifier_check, guidance.classifier_strength
        for group, combo in guidance.classifier_labels.items():  # classifier_shape, classifier_colour, …
            setattr(self, f"classifier_{group}", combo)
        self.clip_guide, self.clip_strength, self.clip_text = (guidance.clip_check, guidance.clip_strength,
                                                               guidance.clip_text)

    def _connect(self) -> None:
        self.run_buttons.generate_button.clicked.connect(self.generateRequested)
        self.run_buttons.cancel_button.clicked.connect(self.cancelRequested)
        self.model_section.openCheckpointRequested.connect(self.openCheckpointRequested)
        self.model_section.modelChanged.connect(self.modelChanged)
        self.settings_model.changed.connect(self._on_setting_changed)

    def _on_setting_changed(self, name: str, _value: Any) -> None:
        if name in SIZE_SETTINGS:
            self.sizeChanged.emit(*self.generation_size())
        elif name in MASK_SETTINGS:
            self.inpaintOptionsChanged.emit()
        self.changed.emit()

    # -- settings <-> request ------------------------------------------------------------------------------------
    def request(self, **changes: Any) -> GenerationRequest:
        return self.settings_model.to_request(**changes)

    def settings(self) -> dict[str, Any]:
        return self.settings_model.to_dict()

    def apply_settings(self, settings: dict[str, Any], size: bool = True) -> None:
        """Set every setting named in `settings` (GenerationRequest field names); unknown keys and unusable values
        are skipped. The size stays when `size` is False or an open image sets it."""
        if not (size and self.width_spin.isEnabled()):
            settings = {k: v for k, v in settings.items() if k not in SIZE_SETTINGS}
        self.settings_model.apply(settings)

    def generation_size(self) -> tuple[int, int]:
        return self.settings_model.width, self.settings_model.height

    def set_size(self, width: int, height: int) -> None:
        self.settings_model.width, self.settings_model.height = width, height

    def feather_and_grow(self) -> tuple[float, int]:
        return self.settings_model.feather, self.settings_model.grow

    def set_size_multiple(self, multiple: int = SIZE_MULTIPLE) -> None:
        """The size boxes step by the model's size multiple; the current size is rounded to it."""
        self.size_section.set_size_multiple(multiple)

    # -- models ---------------------------------------------------------------------------------------------------
    def allow_samplers(self, names: tuple[str, ...], guidable: bool = True) -> None:
        self.sampling_section.allow_samplers(names, guidable)

    def follow_model_cfg(self, cfg: float) -> None:
        """The loaded model's recommended guidance scale, unless the user has chosen one."""
        self.settings_model.follow_model_cfg(cfg)

    def follow_inpaint_strength(self, native_inpainting: bool) -> None:
        """Strength 1 while inpainting with a model that inpaints natively, unless the user chose one; said in the
        strength box's tooltip."""
        self.settings_model.follow_inpaint_strength(native_inpainting)
        self.size_section.explain_strength(native_inpainting and self.settings_model.strength_follows_task)

    def model_spec(self) -> str:
        return self.settings_model.model

    def model_name(self) -> str:
        return model_label(self.settings_model.model)

    def recent_models(self) -> list[str]:
        return list(self.settings_model.recent_models)

    def set_recent_models(self, paths: list[str]) -> None:
        self.settings_model.recent_models = paths

    def set_model(self, spec: str) -> None:
        self.settings_model.model = spec

    def set_devices(self, devices: list[str]) -> None:
        self.model_section.set_devices(devices)

    # -- state ----------------------------------------------------------------------------------------------------
    def randomize_seed(self) -> None:
        self.sampling_section.randomize_seed()

    def set_running(self, running: bool) -> None:
        self.run_buttons.set_running(running)

    def set_image_mode(self, has_image: bool, image_size: tuple[int, int] | None = None) -> None:
        """With an image open the size follows it; strength and inpainting only apply then."""
        self.size_section.set_image_mode(has_image, image_size)
        self.inpaint_section.setEnabled(has_image)

    def show_progress(self, step: int, total: int, text: str) -> None:
        self.run_buttons.show_progress(step, total, text)

    def set_progress_text(self, text: str) -> None:
        self.run_buttons.progress.setFormat(text)

    def set_mode_text(self, text: str) -> None:
        self.run_buttons.mode_label.setText(text)
