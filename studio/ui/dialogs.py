"""Dialogs opened with `.open()` (window-modal, no nested event loop: safe under qasync, qasync #82)."""

from __future__ import annotations

from typing import Callable, Literal

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from .image_io import fitted_size


def _dialog(parent: QWidget, title: str, directory: str, name: str) -> QFileDialog:
    dialog = QFileDialog(parent, title, directory)
    dialog.setObjectName(name)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    return dialog


def ask_open_file(parent: QWidget, title: str, file_filter: str, directory: str, done: Callable[[str], None]) -> QFileDialog:
    dialog = _dialog(parent, title, directory, "openFileDialog")
    dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
    dialog.setNameFilter(file_filter)
    dialog.fileSelected.connect(done)
    dialog.open()
    return dialog


def ask_save_file(parent: QWidget, title: str, file_filter: str, path: str, suffix: str,
                  done: Callable[[str], None]) -> QFileDialog:
    dialog = _dialog(parent, title, path, "saveFileDialog")
    dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
    dialog.setFileMode(QFileDialog.FileMode.AnyFile)
    dialog.setNameFilter(file_filter)
    dialog.setDefaultSuffix(suffix)
    dialog.fileSelected.connect(done)
    dialog.open()
    return dialog


def ask_directory(parent: QWidget, title: str, directory: str, done: Callable[[str], None]) -> QFileDialog:
    dialog = _dialog(parent, title, directory, "directoryDialog")
    dialog.setFileMode(QFileDialog.FileMode.Directory)
    dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
    dialog.fileSelected.connect(done)
    dialog.open()
    return dialog


def crop_or_pad_text(width: int, height: int, multiple: int) -> str:
    crop_w, crop_h = fitted_size(width, height, multiple, "crop")
    pad_w, pad_h = fitted_size(width, height, multiple, "pad")
    return (f"This picture is {width}×{height}; this model needs sides that are multiples of {multiple}. "
            f"Crop to {crop_w}×{crop_h}, or pad to {pad_w}×{pad_h}?")


def ask_crop_or_pad(parent: QWidget, width: int, height: int, multiple: int,
                    done: Callable[[Literal["crop", "pad"] | None], None]) -> QMessageBox:
    """Offer to crop or pad a picture whose sides do not fit the model; `done` gets "crop", "pad" or None
    (Cancel, Escape, closed). Crop is disabled when a side is shorter than `multiple` (nothing would be left).
    Opened with `.open()` like the file dialogs, so the answer arrives through `done`, not as a return value."""
    text = crop_or_pad_text(width, height, multiple)
    box = QMessageBox(QMessageBox.Icon.Question, "Fit the picture to the model", text,
                      QMessageBox.StandardButton.NoButton, parent)
    box.setObjectName("cropOrPadDialog")
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    crop = box.addButton("Crop", QMessageBox.ButtonRole.AcceptRole)
    crop.setObjectName("cropButton")
    crop.setEnabled(width >= multiple and height >= multiple)
    pad = box.addButton("Pad", QMessageBox.ButtonRole.AcceptRole)
    pad.setObjectName("padButton")
    cancel = box.addButton("Cancel", QMessageBox.ButtonRole.RejectRole)
    cancel.setObjectName("cancelButton")
    box.setDefaultButton(crop if crop.isEnabled() else pad)
    box.setEscapeButton(cancel)
    answers: dict[object, Literal["crop", "pad"]] = {crop: "crop", pad: "pad"}
    box.finished.connect(lambda _result: done(answers.get(box.clickedButton())))
    box.open()
    return box
