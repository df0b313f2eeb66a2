"""The prompt panel's sections. Each one shows part of the generation settings and binds its controls to the model.

A section holds no setting of its own: what it shows is `GenerationSettings`, and what it changes goes there.
"""

from __future__ import annotations

import random
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .choices import BUILTIN_MODELS, DEVICES, DTYPES, ETA_TOOLTIP, FILLS, INPAINT_MODES, SAMPLERS, USES_ETA
from .choices import SAMPLER_FAMILY, model_label, supports_karras
from .form_widgets import bound_check, bound_combo, bound_spin, form, set_combo, text_edit
from .settings_model import LIMITS, MAX_SEED, GenerationSettings, bind

OPEN_FILE, OPEN_FOLDER = "__open_checkpoint_file__", "__open_diffusers_folder__"
SIZE_MULTIPLE = 8  # the model's latent grid; the lead's model probe may set another
STRENGTH_TIP = ("Image to image: how much of the schedule is re-run over the input.\n"
                "Low keeps the image, 1 ignores it (except outside the mask when inpainting).")
NATIVE_INPAINT_TIP = ("\n\n1 now: this model inpaints natively (it sees the picture around the mask), so inpainting "
                      "starts from pure noise, as A1111 and InvokeAI do. Set a strength to choose your own.")


def _row(*widgets: QWidget, stretch_first: bool = True) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, widget in enumerate(widgets):
        row.addWidget(widget, 1 if i == 0 and stretch_first else 0)
    return row


class PromptSection(QGroupBox):
    def __init__(self, settings: GenerationSettings, parent: QWidget | None = None):
        super().__init__("Prompt", parent)
        self.prompt = text_edit("promptEdit", "Describe the image… (Ctrl+Enter generates)", 72)
        self.negative = text_edit("negativePromptEdit", "What to avoid (optional)", 44)
        self.negative.setMaximumHeight(80)
        bind(settings, "prompt", self.prompt)
        bind(settings, "negative_prompt", self.negative)
        self.read_prompt = bound_check(
            settings, "read_prompt", "readPromptCheck", "Read",
            "The built-in model reads your prompt and rewrites it into the sentences it was trained on before its\n"
            "text encoder sees it (its prompt reader). Off: the text encoder reads the prompt exactly as typed.\n"
            "Other models always read the prompt as typed.")
        # what the last shown run's text encoder read instead of the prompt (RunInfo.read_as); empty when it was the
        # prompt itself
        self.read_as = QLabel()
        self.read_as.setObjectName("readAsLabel")
        self.read_as.setEnabled(False)  # greyed: a note, not a control
        self.read_as.setWordWrap(True)
        self.read_as.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addWidget(self.prompt, 2)
        reading = QHBoxLayout()
        reading.addWidget(self.read_prompt, 0)
        reading.addWidget(self.read_as, 1)
        layout.addLayout(reading)
        negative_label = QLabel("Negative prompt")
        negative_label.setBuddy(self.negative)
        layout.addWidget(negative_label)
        layout.addWidget(self.negative, 1)

    def show_reading(self, read_as: str | None) -> None:
        """The caption the model read for the shown run, or nothing when it read the prompt as typed."""
        self.read_as.setText(f"read as: {read_as}" if read_as else "")
        self.read_as.setToolTip("What the built-in model's text encoder read for this run's prompt" if read_as else "")


class ModelSection(QGroupBox):
    """The model list (built-ins, recent files, 'Open …'), the device and the precision."""

    openCheckpointRequested = Signal(bool)  # True: a diffusers folder, False: a checkpoint file
    modelChanged = Signal(str)  # the user picked another model

    def __init__(self, settings: GenerationSettings, parent: QWidget | None = None):
        super().__init__("Model", parent)
        self._settings = settings
        self.model = QComboBox()
        self.model.setObjectName("modelCombo")
        self.model.setToolTip("The model to sample with. Open your own Stable Diffusion 1.x/2.x checkpoint here.")
        self.model.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model.setMinimumContentsLength(14)
        self.model.activated.connect(self._on_activated)
        self.device = bound_combo(settings, "device", "deviceCombo", {"auto": DEVICES["auto"], "cpu": DEVICES["cpu"]},
                                  "Where the model runs. Auto picks a CUDA or Apple GPU when there is one.")
        self.dtype = bound_combo(settings, "dtype", "dtypeCombo", DTYPES,
                                 "Precision. Auto = half precision on a GPU, exact fp32 on the CPU. Fast = bf16 on a "
                                 "CPU with AVX512-BF16 or AMX (about 1.5-2x faster, slightly different pixels), "
                                 "fp32 on other CPUs.")
        layout = form()
        layout.addRow("Model", self.model)
        layout.addRow("Device", self.device)
        layout.addRow("Precision", self.dtype)
        self.setLayout(layout)
        self._fill_models()
        settings.changed.connect(self._on_setting_changed)

    def _on_setting_changed(self, name: str, _value: Any) -> None:
        if name == "recent_models":
            self._fill_models()
        elif name == "model":
            self._show_current_model()

    def _fill_models(self) -> None:
        self.model.blockSignals(True)
        self.model.clear()
        for spec, label in BUILTIN_MODELS.items():
            self.model.addItem(label, spec)
        for path in self._settings.recent_models:
            self.model.addItem(model_label(path), path)
            self.model.setItemData(self.model.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        self.model.insertSeparator(self.model.count())
        self.model.addItem("Open checkpoint file…", OPEN_FILE)
        self.model.addItem("Open diffusers folder…", OPEN_FOLDER)
        self.model.blockSignals(False)
        self._show_current_model()

    def _show_current_model(self) -> None:
        index = self.model.findData(self._settings.model)
        if index >= 0:
            self.model.setCurrentIndex(index)

    def _on_activated(self, index: int) -> None:
        spec = self.model.itemData(index)
        if spec in (OPEN_FILE, OPEN_FOLDER):
            self._show_current_model()  # stays on the old model until a file is chosen
            self.openCheckpointRequested.emit(spec == OPEN_FOLDER)
        elif spec != self._settings.model:
            self._settings.model = spec
            self.modelChanged.emit(spec)

    def set_devices(self, devices: list[str]) -> None:
        self.device.blockSignals(True)
        self.device.clear()
        for name in devices:
            self.device.addItem(DEVICES.get(name, name), name)
        self.device.blockSignals(False)
        if self._settings.device in devices:
            set_combo(self.device, self._settings.device)
        elif devices:
            self._settings.device = "auto" if "auto" in devices else devices[0]
            set_combo(self.device, self._settings.device)


class SamplingSection(QGroupBox):
    """Sampler, steps, eta, guidance, seed and clip skip; eta and Karras are enabled where the sampler uses them."""

    def __init__(self, settings: GenerationSettings, parent: QWidget | None = None):
        super().__init__("Sampling", parent)
        self._settings = settings
        self._build_controls(settings)
        self._build_layout()
        settings.changed.connect(self._on_setting_changed)
        self._show_sampler_options()

    def _build_controls(self, settings: GenerationSettings) -> None:
        self.sampler = bound_combo(settings, "sampler", "samplerCombo", SAMPLERS,
                                   "DDIM and DDPM follow the model's timesteps; Euler a and DPM++ 2M work in σ.")
        self.karras = bound_check(settings, "karras", "karrasCheck", "Karras",
                                  "Karras σ spacing (more steps at low noise) instead of the model's timesteps")
        self.steps = bound_spin(settings, "steps", "stepsSpin", 1,
                                tooltip="Number of denoising steps; every one is kept on the timeline")
        self.eta = bound_spin(settings, "eta", "etaSpin", 0.05, tooltip=ETA_TOOLTIP)
        self.eta_label = QLabel("Eta (η)")
        self.eta_label.setToolTip(ETA_TOOLTIP)
        self.cfg = bound_spin(settings, "cfg", "cfgSpin", 0.5, tooltip=(
            "Classifier-free guidance scale: how strongly the prompt steers. 1 = no guidance.\n"
            "Follows the model's recommended value until you change it."))
        self.seed = bound_spin(settings, "seed", "seedSpin", 1, tooltip="Same seed + same settings = same image")
        self.random_seed = QToolButton()
        self.random_seed.setObjectName("randomSeedButton")
        self.random_seed.setText("⚄")
        self.random_seed.setToolTip("New random seed")
        self.random_seed.clicked.connect(self.randomize_seed)
        self.random_each = bound_check(settings, "random_each", "randomEachRunCheck", "New each run",
                                       "Draw a new seed every time you press Generate")
        self.clip_skip = bound_spin(settings, "clip_skip", "clipSkipSpin", 1,
                                    tooltip="Use the text encoder's n-th last layer (A1111 convention: 1 = last)")
        self.cold_noise = bound_spin(settings, "cold_noise", "coldNoiseSpin", 0.001, tooltip=(
            "Cold diffusion: the Gaussian noise added to the one-colour start of a generation.\n"
            "0 = the deterministic start: the samples collapse onto a few pictures."))
        self.cold_noise_label = QLabel("Start noise")
        self.cfg_applies = True  # the loaded model uses a guidance scale (allow_samplers)

    def _build_layout(self) -> None:
        layout = form()
        layout.addRow("Sampler", _row(self.sampler, self.karras))
        layout.addRow("Steps", self.steps)
        layout.addRow(self.eta_label, self.eta)
        layout.addRow("CFG scale", self.cfg)
        layout.addRow("Seed", _row(self.seed, self.random_seed))
        layout.addRow("", self.random_each)
        layout.addRow("Clip skip", self.clip_skip)
        layout.addRow(self.cold_noise_label, self.cold_noise)
        self.setLayout(layout)

    def _on_setting_changed(self, name: str, _value: Any) -> None:
        if name == "sampler":
            self._show_sampler_options()

    def _show_sampler_options(self) -> None:
        sampler = self._settings.sampler
        uses_eta = sampler in USES_ETA
        self.eta.setEnabled(uses_eta)
        self.eta_label.setEnabled(uses_eta)
        self.karras.setEnabled(supports_karras(sampler))

    def randomize_seed(self) -> None:
        self._settings.seed = random.randint(0, MAX_SEED)

    def allow_samplers(self, names: tuple[str, ...], guidable: bool = True) -> None:
        """Offer only the samplers the loaded model runs with (ModelInfo.samplers: a cold model's are its own), and
        only the controls it uses: a cold model has no text encoder layers to skip, and no guidance scale unless it
        was trained for guidance (`guidable`)."""
        view = self.sampler.view()
        for row in range(self.sampler.count()):
            view.setRowHidden(row, self.sampler.itemData(row) not in names)
        if names and self._settings.sampler not in names:
            self._settings.sampler = names[0]
        cold = bool(names) and all(SAMPLER_FAMILY.get(name) == "cold" for name in names)
        for widget in (self.cold_noise, self.cold_noise_label):  # a cold model's start; latent diffusion has none
            widget.setEnabled(cold)
        self.cfg_applies = not cold or guidable
        self.cfg.setEnabled(self.cfg_applies)
        self.clip_skip.setEnabled(not cold)


class SizeSection(QGroupBox):
    """Width × height (a multiple of the model's latent grid; the open image's size when there is one) and strength."""

    def __init__(self, settings: GenerationSettings, parent: QWidget | None = None):
        super().__init__("Size and strength", parent)
        self._settings = settings
        self._multiple = SIZE_MULTIPLE
        self.width_spin = bound_spin(settings, "width", "widthSpin", SIZE_MULTIPLE, " px")
        self.height_spin = bound_spin(settings, "height", "heightSpin", SIZE_MULTIPLE, " px")
        for spin in (self.width_spin, self.height_spin):
            spin.editingFinished.connect(self.round_size)
        self.strength = bound_spin(settings, "strength", "strengthSpin", 0.05, tooltip=STRENGTH_TIP)
        self.size_label = QLabel("Size")
        layout = form()
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_spin, 1)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_spin, 1)
        layout.addRow(self.size_label, size_row)
        layout.addRow("Strength", self.strength)
        self.setLayout(layout)

    def explain_strength(self, native_inpainting: bool) -> None:
        self.strength.setToolTip(STRENGTH_TIP + (NATIVE_INPAINT_TIP if native_inpainting else ""))

    def set_size_multiple(self, multiple: int) -> None:
        self._multiple = max(1, int(multiple))
        for spin in (self.width_spin, self.height_spin):
            spin.setSingleStep(self._multiple)
        self.round_size()

    def round_size(self) -> None:
        """A size the model can use; the open image's own size is left as it is."""
        if not self.width_spin.isEnabled():
            return
        m = self._multiple
        for name in ("width", "height"):
            lowest = -(-int(LIMITS[name].lo) // m) * m
            self._settings.set(name, max(lowest, round(self._settings.get(name) / m) * m))

    def set_image_mode(self, has_image: bool, image_size: tuple[int, int] | None = None) -> None:
        tip = "The size follows the open image (File ▸ New blank canvas to choose one)" if has_image else ""
        for spin in (self.width_spin, self.height_spin):
            spin.setEnabled(not has_image)
            spin.setToolTip(tip)
        if image_size is not None:
            self._settings.width, self._settings.height = image_size
        self.strength.setEnabled(has_image)


class InpaintSection(QGroupBox):
    def __init__(self, settings: GenerationSettings, parent: QWidget | None = None):
        super().__init__("Inpainting", parent)
        self._settings = settings
        self._build_controls(settings)
        self._build_layout()
        settings.changed.connect(self._on_setting_changed)
        self.padding.setEnabled(settings.only_masked)

    def _build_controls(self, settings: GenerationSettings) -> None:
        self.feather = bound_spin(settings, "feather", "featherSpin", 1.0, " px",
                                  "Soften the mask's edge over this many pixels (Gaussian); the canvas shows it live")
        self.grow = bound_spin(settings, "grow", "growSpin", 1, " px",
                               "Grow the mask by this many pixels before feathering")
        self.only_masked = bound_check(
            settings, "only_masked", "onlyMaskedCheck", "Only masked area",
            "Generate the mask's bounding box (plus padding) at full resolution, then paste it back")
        self.padding = bound_spin(settings, "padding", "paddingSpin", 4, " px",
                                  "Context kept around the mask for 'Only masked area'")
        self.fill = bound_combo(settings, "fill", "fillCombo", FILLS,
                                "What the masked area starts from: the original pixels, latent noise, or a blur")
        self.inpaint_mode = bound_combo(
            settings, "inpaint_mode", "inpaintModeCombo", INPAINT_MODES,
            "Latent blend works with any model; 'Inpainting model' needs a 9-channel checkpoint")
        self.paste_back = bound_check(
            settings, "paste_back", "pasteBackCheck", "Paste back unmasked pixels",
            "Keep the original pixels outside the feathered mask (no VAE round-trip loss)")

    def _build_layout(self) -> None:
        layout = form()
        layout.addRow("Feather", self.feather)
        layout.addRow("Grow", self.grow)
        masked_row = QHBoxLayout()
        masked_row.addWidget(self.only_masked)
        masked_row.addWidget(self.padding, 1)
        layout.addRow("", masked_row)
        layout.addRow("Fill", self.fill)
        layout.addRow("Method", self.inpaint_mode)
        layout.addRow("", self.paste_back)
        self.setLayout(layout)

    def _on_setting_changed(self, name: str, value: Any) -> None:
        if name == "only_masked":
            self.padding.setEnabled(value)


class RunButtons(QWidget):
    """Generate / Cancel, the mode line above them and the progress bar below."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generateButton")
        self.generate_button.setToolTip("Generate (Ctrl+Enter)")
        self.generate_button.setDefault(True)
        self.generate_button.setMinimumHeight(34)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.setToolTip("Stop at the next step (Esc)")
        self.cancel_button.setMinimumHeight(34)
        self.cancel_button.setEnabled(False)
        self.mode_label = QLabel()
        self.mode_label.setObjectName("modeLabel")
        self.mode_label.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setObjectName("progressBar")
        self.progress.setTextVisible(True)
        self.show_progress(0, 1, "Ready")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.mode_label)
        buttons = QHBoxLayout()
        buttons.addWidget(self.generate_button, 3)
        buttons.addWidget(self.cancel_button, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)

    def set_running(self, running: bool) -> None:
        self.generate_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def show_progress(self, step: int, total: int, text: str) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(step)
        self.progress.setFormat(text)
