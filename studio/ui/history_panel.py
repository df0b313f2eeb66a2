"""The history of this session's runs: thumbnails in a tree, branches under the run they started from."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QModelIndex, QObject, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .choices import KINDS, SAMPLERS, model_label, run_title
from .guides import guided_line
from .images import thumbnail
from .run_history import RunHistory

THUMB = 60
_RUN_ROLE = Qt.ItemDataRole.UserRole + 1
MIN_WIDTH = 250  # the history dock's narrowest: a thumbnail and a few words a line


class WrappedRows(QStyledItemDelegate):
    """Rows as tall as their word-wrapped text at the tree's current width (QTreeView measures text unwrapped, so
    wrapped lines were cut off at the row's edge), never shorter than the thumbnail."""

    def __init__(self, tree: QTreeWidget):
        super().__init__(tree)
        self.tree = tree
        tree.viewport().installEventFilter(self)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        depth, parent = 0, index.parent()
        while parent.isValid():
            depth, parent = depth + 1, parent.parent()
        left = self.tree.indentation() * (depth + int(self.tree.rootIsDecorated()))
        opt.rect = QRect(left, 0, max(1, self.tree.viewport().width() - left), 10_000)
        style = self.tree.style()
        text = style.subElementRect(QStyle.SubElement.SE_ItemViewItemText, opt, self.tree)
        margin = style.pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, opt, self.tree) + 1
        bounds = QRect(0, 0, max(1, text.width() - 2 * margin), 10_000)
        height = opt.fontMetrics.boundingRect(bounds, Qt.TextFlag.TextWordWrap, opt.text).height()
        return QSize(opt.rect.width(), max(THUMB, height) + 8)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Resize:
            QTimer.singleShot(0, self.tree.doItemsLayout)  # a new width: rows wrap anew
        return False


class HistoryPanel(QWidget):
    invertRequested = Signal()
    saveRequested = Signal(object)  # Run
    branchRequested = Signal(object)  # Run

    def __init__(self, history: RunHistory, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("historyPanel")
        self.history = history
        self._items: dict[str, QTreeWidgetItem] = {}

        self.tree = QTreeWidget()
        self.tree.setObjectName("historyList")
        self.tree.setHeaderHidden(True)
        self.tree.setColumnCount(1)
        self.tree.setIconSize(QSize(THUMB, THUMB))
        self.tree.setIndentation(14)
        # Lines wrap instead of ending in "…" (the whole line stays readable in a narrow dock); rows grow to fit
        self.tree.setUniformRowHeights(False)
        self.tree.setWordWrap(True)
        self.tree.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.tree.setItemDelegate(WrappedRows(self.tree))
        self.tree.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.tree.setAlternatingRowColors(True)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.tree.currentItemChanged.connect(self._on_current_item)

        self.invert_button = QPushButton("Invert image…")
        self.invert_button.setObjectName("invertButton")
        self.invert_button.setToolTip(
            "DDIM inversion: find the noise that regenerates the current image with this prompt,\n"
            "then open it as a run you can scrub and branch from."
        )
        self.invert_button.clicked.connect(self.invertRequested)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setObjectName("clearHistoryButton")
        self.clear_button.setToolTip("Forget this session's runs")
        self.clear_button.clicked.connect(history.clear)

        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.invert_button, 1)
        buttons.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        self.placeholder = QLabel("Your runs appear here.\n\nClick one to bring back its image,\nsettings and timeline.")
        self.placeholder.setObjectName("historyPlaceholder")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setEnabled(False)
        layout.addWidget(self.placeholder, 1)
        layout.addWidget(self.tree, 1)
        layout.addLayout(buttons)
        self.setMinimumWidth(MIN_WIDTH)

        history.runAdded.connect(self._add)
        history.runChanged.connect(self._refresh)
        history.runRemoved.connect(self._remove)
        history.cleared.connect(self._clear)
        history.selectionChanged.connect(self._select)
        for signal in (history.runAdded, history.runRemoved, history.cleared):
            signal.connect(self._update_placeholder)
        self._update_placeholder()

    def _update_placeholder(self, *_) -> None:
        empty = len(self.history) == 0
        self.placeholder.setVisible(empty)
        self.tree.setVisible(not empty)
        self.clear_button.setEnabled(not empty)

    # -- model → view ---------------------------------------------------------------------------------------------
    def item_for(self, run: Any) -> QTreeWidgetItem | None:
        return self._items.get(run.id)

    def _add(self, run: Any) -> None:
        item = QTreeWidgetItem()
        item.setData(0, _RUN_ROLE, run.id)
        self._items[run.id] = item
        parent = self.history.parent_of(run)
        parent_item = self._items.get(parent.id) if parent is not None else None
        if parent_item is not None:
            parent_item.addChild(item)
            parent_item.setExpanded(True)
        else:
            self.tree.insertTopLevelItem(0, item)  # newest first
        self._refresh(run)

    def _refresh(self, run: Any) -> None:
        item = self._items.get(run.id)
        if item is None:
            return
        request = run.request
        number = self.history.number(run)
        status = {"running": " · running…", "cancelled": f" · stopped at {run.recorded}/{run.steps}",
                  "failed": f" · failed at {run.recorded}/{run.steps}"}.get(run.status, "")
        first = f"#{number} {KINDS.get(run.kind, run.kind)}{status}"
        second = f"{SAMPLERS.get(request.sampler, request.sampler)} · {request.steps} steps · seed {request.seed}"
        if run.parent is not None or run.parent_id:
            second = f"↳ step {run.from_step + 1} · " + second
        guided = guided_line(request)  # "guided: colour 10" (guides.py)
        if guided:
            second += f"\n{guided}"
        prompt = request.prompt.strip().replace("\n", " ") or "(no prompt)"
        item.setText(0, f"{first}\n{second}\n{prompt}")
        item.setToolTip(
            0,
            f"{run_title(run, number)}\nModel: {model_label(request.model)}\nPrompt: {request.prompt}\n"
            f"Negative: {request.negative_prompt}\nCFG {request.cfg:g}, eta {request.eta:g}, "
            f"{request.width}×{request.height}",
        )
        image = run.image if run.image is not None else run.preview
        item.setIcon(0, QIcon(thumbnail(image, THUMB)))

    def _remove(self, run: Any) -> None:
        item = self._items.pop(run.id, None)
        if item is None:
            return
        parent = item.parent()
        if parent is not None:
            parent.removeChild(item)
        else:
            self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(item))

    def _clear(self) -> None:
        self._items.clear()
        self.tree.clear()

    def _select(self, run: Any) -> None:
        item = self._items.get(run.id) if run is not None else None
        if item is not self.tree.currentItem():
            self.tree.blockSignals(True)
            self.tree.setCurrentItem(item)
            self.tree.blockSignals(False)
        if item is not None:
            self.tree.scrollToItem(item)

    # -- view → model ---------------------------------------------------------------------------------------------
    def _on_current_item(self, current: QTreeWidgetItem | None, _previous: QTreeWidgetItem | None) -> None:
        if current is None:
            return
        run = self.history.by_id(current.data(0, _RUN_ROLE))
        if run is not None:
            self.history.select(run)

    def _context_menu(self, pos) -> None:
        item = self.tree.itemAt(pos)
        if item is None:
            return
        run = self.history.by_id(item.data(0, _RUN_ROLE))
        if run is None:
            return
        menu = QMenu(self)
        save = QAction("Save image…", menu)
        save.setEnabled(run.image is not None)
        save.triggered.connect(lambda: self.saveRequested.emit(run))
        branch = QAction("Branch from the selected step", menu)
        branch.triggered.connect(lambda: self.branchRequested.emit(run))
        remove = QAction("Remove from history", menu)
        remove.triggered.connect(lambda: self.history.remove(run))
        remove.setEnabled(run.status != "running")
        menu.addActions([save, branch])
        menu.addSeparator()
        menu.addAction(remove)
        menu.popup(self.tree.viewport().mapToGlobal(pos))
