"""The generation controls: prompt, model, sampler, size, img2img and inpainting options, Generate / Cancel.

The panel reads and writes `GenerationRequest` settings; it knows nothing about images or the engine thread.
"""

from __future__ import annotations

import random
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..engine.request import GenerationRequest
from .choices import BUILTIN_MODELS, DEVICES, DTYPES, ETA_TOOLTIP, FILLS, INPAINT_MODES, SAMPLERS, USES_ETA, model_label
from .form_widgets import combo as _combo
from .form_widgets import dspin as _dspin
from .form_widgets import form as _form
from .form_widgets import set_combo as _set_combo
from .form_widgets import spin as _spin

OPEN_FILE, OPEN_FOLDER = "__open_checkpoint_file__", "__open_diffusers_folder__"
MAX_SEED = 2**32 - 1  # A1111 and ComfyUI seeds fit; the engine takes up to 2^63 − 1
SIZE_STEP = 8


class PromptPanel(QWidget):
    generateRequested = Signal()
    cancelRequested = Signal()
    openCheckpointRequested = Signal(bool)  # True: a diffusers folder, False: a checkpoint file
    modelChanged = Signal(str)
    sizeChanged = Signal(int, int)
    inpaintOptionsChanged = Signal()
    changed = Signal()  # any setting; for autosave

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("promptPanel")
        defaults = GenerationRequest()
        self._model_index = 0

        # -- prompt ---------------------------------------------------------------------------------------------
        self.prompt = QPlainTextEdit()
        self.prompt.setObjectName("promptEdit")
        self.prompt.setPlaceholderText("Describe the image… (Ctrl+Enter generates)")
        self.prompt.setTabChangesFocus(True)
        self.negative = QPlainTextEdit()
        self.negative.setObjectName("negativePromptEdit")
        self.negative.setPlaceholderText("What to avoid (optional)")
        self.negative.setTabChangesFocus(True)
        self.prompt.setMinimumHeight(72)
        self.negative.setMinimumHeight(44)
        self.negative.setMaximumHeight(80)
        prompt_box = QGroupBox("Prompt")
        prompt_layout = QVBoxLayout(prompt_box)
        prompt_layout.addWidget(self.prompt, 2)
        negative_label = QLabel("Negative prompt")
        negative_label.setBuddy(self.negative)
        prompt_layout.addWidget(negative_label)
        prompt_layout.addWidget(self.negative, 1)

        # -- model ----------------------------------------------------------------------------------------------
        self.model = QComboBox()
        self.model.setObjectName("modelCombo")
        self.model.setToolTip("The model to sample with. Open your own Stable Diffusion 1.x/2.x checkpoint here.")
        self.model.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model.setMinimumContentsLength(14)
        self._fill_models([])
        self.model.activated.connect(self._on_model_activated)
        self.device = _combo("deviceCombo", {"auto": DEVICES["auto"], "cpu": DEVICES["cpu"]})
        self.device.setToolTip("Where the model runs. Auto picks a CUDA or Apple GPU when there is one.")
        self.dtype = _combo("dtypeCombo", DTYPES)
        self.dtype.setToolTip("Precision. Auto = half precision on a GPU, full on the CPU.")
        model_box = QGroupBox("Model")
        model_form = _form()
        model_form.addRow("Model", self.model)
        model_form.addRow("Device", self.device)
        model_form.addRow("Precision", self.dtype)
        model_box.setLayout(model_form)

        # -- sampling -------------------------------------------------------------------------------------------
        self.sampler = _combo("samplerCombo", SAMPLERS)
        self.sampler.setToolTip("DDIM and DDPM follow the model's timesteps; Euler a and DPM++ 2M work in σ.")
        self.karras = QCheckBox("Karras")
        self.karras.setObjectName("karrasCheck")
        self.karras.setToolTip("Karras σ spacing (more steps at low noise) instead of the model's timesteps")
        self.steps = _spin("stepsSpin", 1, 1000, defaults.steps)
        self.steps.setToolTip("Number of denoising steps; every one is kept on the timeline")
        self.eta = _dspin("etaSpin", 0.0, 1.0, defaults.eta, 0.05)
        self.eta.setToolTip(ETA_TOOLTIP)
        self.cfg = _dspin("cfgSpin", 0.0, 30.0, defaults.cfg, 0.5, 1)
        self.cfg.setToolTip("Classifier-free guidance scale: how strongly the prompt steers. 1 = no guidance.\n"
                            "Follows the model's recommended value until you change it.")
        # True while the scale is the model's own recommendation: a model switch then brings the new model's. Any
        # other change (by hand, a restored PNG or session) is the user's choice and stays.
        self._cfg_follows_model = True
        self._setting_model_cfg = False
        self.cfg.valueChanged.connect(self._cfg_changed)
        self.seed = QDoubleSpinBox()
        self.seed.setObjectName("seedSpin")
        self.seed.setDecimals(0)
        self.seed.setRange(0, MAX_SEED)
        self.seed.setValue(defaults.seed)
        self.seed.setToolTip("Same seed + same settings = same image")
        self.random_seed = QToolButton()
        self.random_seed.setObjectName("randomSeedButton")
        self.random_seed.setText("⚄")
        self.random_seed.setToolTip("New random seed")
        self.random_seed.clicked.connect(self.randomize_seed)
        self.random_each = QCheckBox("New each run")
        self.random_each.setObjectName("randomEachRunCheck")
        self.random_each.setToolTip("Draw a new seed every time you press Generate")
        self.clip_skip = _spin("clipSkipSpin", 1, 12, defaults.clip_skip)
        self.clip_skip.setToolTip("Use the text encoder's n-th last layer (A1111 convention: 1 = last)")
        sampling_box = QGroupBox("Sampling")
        sampling = _form()
        sampler_row = QHBoxLayout()
        sampler_row.addWidget(self.sampler, 1)
        sampler_row.addWidget(self.karras)
        sampling.addRow("Sampler", sampler_row)
        sampling.addRow("Steps", self.steps)
        self.eta_label = QLabel("Eta (η)")
        self.eta_label.setToolTip(ETA_TOOLTIP)
        sampling.addRow(self.eta_label, self.eta)
        sampling.addRow("CFG scale", self.cfg)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.random_seed)
        sampling.addRow("Seed", seed_row)
        sampling.addRow("", self.random_each)
        sampling.addRow("Clip skip", self.clip_skip)
        sampling_box.setLayout(sampling)

        # -- size and img2img -----------------------------------------------------------------------------------
        self.width_spin = _spin("widthSpin", 64, 4096, defaults.width, 64, " px")
        self.height_spin = _spin("heightSpin", 64, 4096, defaults.height, 64, " px")
        for spin in (self.width_spin, self.height_spin):
            spin.editingFinished.connect(self._round_size)
            spin.valueChanged.connect(lambda _=0: self.sizeChanged.emit(self.width_spin.value(), self.height_spin.value()))
        self.strength = _dspin("strengthSpin", 0.01, 1.0, 0.75, 0.05)
        self.strength.setToolTip("Image to image: how much of the schedule is re-run over the input.\n"
                                 "Low keeps the image, 1 ignores it (except outside the mask when inpainting).")
        image_box = QGroupBox("Size and strength")
        image_form = _form()
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_spin, 1)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_spin, 1)
        self.size_label = QLabel("Size")
        image_form.addRow(self.size_label, size_row)
        image_form.addRow("Strength", self.strength)
        image_box.setLayout(image_form)

        # -- inpainting -----------------------------------------------------------------------------------------
        self.feather = _dspin("featherSpin", 0.0, 128.0, defaults.feather, 1.0, 1, " px")
        self.feather.setToolTip("Soften the mask's edge over this many pixels (Gaussian); the canvas shows it live")
        self.grow = _spin("growSpin", 0, 128, defaults.grow, 1, " px")
        self.grow.setToolTip("Grow the mask by this many pixels before feathering")
        self.only_masked = QCheckBox("Only masked area")
        self.only_masked.setObjectName("onlyMaskedCheck")
        self.only_masked.setToolTip("Generate the mask's bounding box (plus padding) at full resolution, then paste it back")
        self.padding = _spin("paddingSpin", 0, 512, defaults.padding, 4, " px")
        self.padding.setToolTip("Context kept around the mask for 'Only masked area'")
        self.fill = _combo("fillCombo", FILLS)
        self.fill.setToolTip("What the masked area starts from: the original pixels, latent noise, or a blur")
        self.inpaint_mode = _combo("inpaintModeCombo", INPAINT_MODES)
        self.inpaint_mode.setToolTip("Latent blend works with any model; 'Inpainting model' needs a 9-channel checkpoint")
        self.paste_back = QCheckBox("Paste back unmasked pixels")
        self.paste_back.setObjectName("pasteBackCheck")
        self.paste_back.setChecked(defaults.paste_back)
        self.paste_back.setToolTip("Keep the original pixels outside the feathered mask (no VAE round-trip loss)")
        self.inpaint_box = QGroupBox("Inpainting")
        inpaint = _form()
        inpaint.addRow("Feather", self.feather)
        inpaint.addRow("Grow", self.grow)
        masked_row = QHBoxLayout()
        masked_row.addWidget(self.only_masked)
        masked_row.addWidget(self.padding, 1)
        inpaint.addRow("", masked_row)
        inpaint.addRow("Fill", self.fill)
        inpaint.addRow("Method", self.inpaint_mode)
        inpaint.addRow("", self.paste_back)
        self.inpaint_box.setLayout(inpaint)
        self.only_masked.toggled.connect(self.padding.setEnabled)
        self.padding.setEnabled(False)
        for w in (self.feather, self.grow):
            w.valueChanged.connect(lambda _=0: self.inpaintOptionsChanged.emit())

        # -- generate -------------------------------------------------------------------------------------------
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generateButton")
        self.generate_button.setToolTip("Generate (Ctrl+Enter)")
        self.generate_button.setDefault(True)
        self.generate_button.setMinimumHeight(34)
        self.generate_button.clicked.connect(self.generateRequested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.setToolTip("Stop at the next step (Esc)")
        self.cancel_button.setMinimumHeight(34)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.mode_label = QLabel()
        self.mode_label.setObjectName("modeLabel")
        self.mode_label.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setObjectName("progressBar")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("Ready")

        body = QWidget()
        body_layout = QVBoxLayout(body)
        body_layout.setContentsMargins(0, 0, 4, 0)
        body_layout.setSpacing(8)
        for box in (prompt_box, model_box, sampling_box, image_box, self.inpaint_box):
            body_layout.addWidget(box)
        body_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setObjectName("promptScroll")
        scroll.setWidget(body)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        buttons = QHBoxLayout()
        buttons.addWidget(self.generate_button, 3)
        buttons.addWidget(self.cancel_button, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(6)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.mode_label)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)

        self.sampler.currentIndexChanged.connect(self._update_eta_enabled)
        self._update_eta_enabled()
        for w in self._value_widgets():
            signal = getattr(w, "valueChanged", None) or getattr(w, "currentIndexChanged", None) or getattr(w, "toggled", None)
            if signal is None and isinstance(w, QPlainTextEdit):
                signal = w.textChanged
            signal.connect(lambda *_: self.changed.emit())
        self.setMinimumWidth(300)

    # -- settings <-> request ------------------------------------------------------------------------------------
    def request(self, **changes: Any) -> GenerationRequest:
        values = dict(
            prompt=self.prompt.toPlainText(),
            negative_prompt=self.negative.toPlainText(),
            model=self.model_spec(),
            sampler=self.sampler.currentData(),
            steps=self.steps.value(),
            eta=round(self.eta.value(), 4),
            cfg=round(self.cfg.value(), 4),
            seed=int(self.seed.value()),
            width=self.width_spin.value(),
            height=self.height_spin.value(),
            karras=self.karras.isChecked(),
            clip_skip=self.clip_skip.value(),
            device=self.device.currentData(),
            dtype=self.dtype.currentData(),
            strength=round(self.strength.value(), 4),
            feather=round(self.feather.value(), 4),
            grow=self.grow.value(),
            inpaint_mode=self.inpaint_mode.currentData(),
            only_masked=self.only_masked.isChecked(),
            padding=self.padding.value(),
            fill=self.fill.currentData(),
            paste_back=self.paste_back.isChecked(),
        )
        values.update(changes)
        return GenerationRequest(**values)

    def settings(self) -> dict[str, Any]:
        return self.request().settings()

    def apply_settings(self, settings: dict[str, Any], size: bool = True) -> None:
        """Set every control named in `settings` (GenerationRequest field names); unknown keys are ignored."""
        s = settings
        if "prompt" in s:
            self.prompt.setPlainText(str(s["prompt"]))
        if "negative_prompt" in s:
            self.negative.setPlainText(str(s["negative_prompt"]))
        if "model" in s:
            self.set_model(str(s["model"]))
        _set_combo(self.sampler, s.get("sampler"))
        _set_combo(self.device, s.get("device"))
        _set_combo(self.dtype, s.get("dtype"))
        _set_combo(self.fill, s.get("fill"))
        _set_combo(self.inpaint_mode, s.get("inpaint_mode"))
        for key, spin in (("steps", self.steps), ("clip_skip", self.clip_skip), ("grow", self.grow), ("padding", self.padding)):
            if key in s:
                spin.setValue(int(s[key]))
        for key, spin in (("eta", self.eta), ("cfg", self.cfg), ("strength", self.strength), ("feather", self.feather)):
            if key in s:
                spin.setValue(float(s[key]))
        if "seed" in s:
            self.seed.setValue(min(int(s["seed"]), MAX_SEED))
        if size and self.width_spin.isEnabled():
            if "width" in s:
                self.width_spin.setValue(int(s["width"]))
            if "height" in s:
                self.height_spin.setValue(int(s["height"]))
        for key, box in (("karras", self.karras), ("only_masked", self.only_masked), ("paste_back", self.paste_back)):
            if key in s:
                box.setChecked(bool(s[key]))

    # -- models ---------------------------------------------------------------------------------------------------
    def follow_model_cfg(self, cfg: float) -> None:
        """The loaded model's recommended guidance scale, unless the user has chosen one."""
        if self._cfg_follows_model:
            self._setting_model_cfg = True
            try:
                self.cfg.setValue(cfg)
            finally:
                self._setting_model_cfg = False

    def _cfg_changed(self) -> None:
        if not self._setting_model_cfg:
            self._cfg_follows_model = False

    def model_spec(self) -> str:
        data = self.model.itemData(self._model_index)
        return data if isinstance(data, str) and data not in (OPEN_FILE, OPEN_FOLDER) else "default"

    def recent_models(self) -> list[str]:
        return [self.model.itemData(i) for i in range(self.model.count())
                if isinstance(self.model.itemData(i), str) and self.model.itemData(i) not in BUILTIN_MODELS
                and self.model.itemData(i) not in (OPEN_FILE, OPEN_FOLDER)]

    def set_recent_models(self, paths: list[str]) -> None:
        current = self.model_spec()
        self._fill_models(paths)
        self.set_model(current)

    def set_model(self, spec: str) -> None:
        index = self.model.findData(spec)
        if index < 0:
            if spec in BUILTIN_MODELS:
                return
            self._fill_models([spec] + self.recent_models())
            index = self.model.findData(spec)
        self._model_index = index
        self.model.setCurrentIndex(index)

    def _fill_models(self, paths: list[str]) -> None:
        self.model.blockSignals(True)
        self.model.clear()
        for spec, label in BUILTIN_MODELS.items():
            self.model.addItem(label, spec)
        for path in dict.fromkeys(paths):
            self.model.addItem(model_label(path), path)
            self.model.setItemData(self.model.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        self.model.insertSeparator(self.model.count())
        self.model.addItem("Open checkpoint file…", OPEN_FILE)
        self.model.addItem("Open diffusers folder…", OPEN_FOLDER)
        self.model.blockSignals(False)
        self._model_index = min(self._model_index, self.model.count() - 1)

    def _on_model_activated(self, index: int) -> None:
        data = self.model.itemData(index)
        if data in (OPEN_FILE, OPEN_FOLDER):
            self.model.setCurrentIndex(self._model_index)  # stays on the old model until a file is chosen
            self.openCheckpointRequested.emit(data == OPEN_FOLDER)
            return
        if index != self._model_index:
            self._model_index = index
            self.modelChanged.emit(self.model_spec())

    def set_devices(self, devices: list[str]) -> None:
        current = self.device.currentData()
        self.device.blockSignals(True)
        self.device.clear()
        for name in devices:
            self.device.addItem(DEVICES.get(name, name), name)
        self.device.blockSignals(False)
        _set_combo(self.device, current)

    # -- state ----------------------------------------------------------------------------------------------------
    def randomize_seed(self) -> None:
        self.seed.setValue(random.randint(0, MAX_SEED))

    def set_running(self, running: bool) -> None:
        self.generate_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def set_image_mode(self, has_image: bool, image_size: tuple[int, int] | None = None) -> None:
        """With an image open the size follows it; strength and inpainting only apply then."""
        self.width_spin.setEnabled(not has_image)
        self.height_spin.setEnabled(not has_image)
        tip = "The size follows the open image (File ▸ New blank canvas to choose one)" if has_image else ""
        self.width_spin.setToolTip(tip)
        self.height_spin.setToolTip(tip)
        if image_size is not None:
            self.width_spin.setValue(image_size[0])
            self.height_spin.setValue(image_size[1])
        self.strength.setEnabled(has_image)
        self.inpaint_box.setEnabled(has_image)

    def show_progress(self, step: int, total: int, text: str) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(step)
        self.progress.setFormat(text)

    def _update_eta_enabled(self) -> None:
        enabled = self.sampler.currentData() in USES_ETA
        self.eta.setEnabled(enabled)
        self.eta_label.setEnabled(enabled)

    def _round_size(self) -> None:
        for spin in (self.width_spin, self.height_spin):
            value = max(SIZE_STEP, round(spin.value() / SIZE_STEP) * SIZE_STEP)
            if value != spin.value():
                spin.setValue(value)

    def _value_widgets(self) -> list[QWidget]:
        return [self.prompt, self.negative, self.model, self.device, self.dtype, self.sampler, self.karras,
                self.steps, self.eta, self.cfg, self.seed, self.clip_skip, self.width_spin, self.height_spin,
                self.strength, self.feather, self.grow, self.only_masked, self.padding, self.fill,
                self.inpaint_mode, self.paste_back, self.random_each]
