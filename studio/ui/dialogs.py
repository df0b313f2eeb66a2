"""File dialogs opened with `.open()` (window-modal, no nested event loop: safe under qasync, qasync #82)."""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QWidget


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
