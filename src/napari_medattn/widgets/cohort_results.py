"""Cohort results browser: a cohort's results table in napari; a row opens its case.

The table is :func:`napari_medattn.cohort.read_results` (one row per case: status,
runtime, the task's figures); clicking a row reads that case's scan and its NIfTI outputs
(:func:`napari_medattn.cohort.load_case`) in a job off the GUI thread and adds them as
layers on the scan's geometry: the scan as an image, the label map as labels, every other
output (probabilities, uncertainty, attention and explanation maps) as a heat map.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_medattn.widgets.parts.jobs import JobWidget
from napari_medattn.widgets.parts.layers import heat_map_layer_data, labels_layer_data
from napari_medattn.widgets.tooltips import COHORT_RESULTS as TOOLTIPS
from napari_medattn.widgets.worker import Job, add_layers

#: ``DERIVED_KEY`` value of the layers this widget adds (outputs, not new scans).
MADE_BY = "cohort results"
#: Table columns shown first; the task's figures follow, then the error.
LEADING = ("case", "status", "runtime_s")


class CohortResultsWidget(JobWidget):
    """The results browser (see the module docstring)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, run=self.open_selected, tooltips=TOOLTIPS,
                         run_text="Open case", run_key="open")
        self.results: Any = None  # the pandas table shown
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("cohort output folder")
        self.folder.setToolTip(TOOLTIPS["folder"])
        self.folder.returnPressed.connect(lambda: self.load(self.folder.text()))
        browse = QPushButton("Browse...")
        browse.setToolTip(TOOLTIPS["browse"])
        browse.clicked.connect(self._browse)
        row = QWidget()
        line = QHBoxLayout(row)
        line.setContentsMargins(0, 0, 0, 0)
        line.addWidget(self.folder)
        line.addWidget(browse)
        self.table = QTableWidget()
        self.table.setToolTip(TOOLTIPS["table"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.cellClicked.connect(lambda row, _column: self.open_selected())
        self.table.itemSelectionChanged.connect(self.jobs.refresh)
        form = QFormLayout(self)
        form.addRow("Cohort", row)
        form.addRow(self.table)
        form.addRow(self.jobs)
        form.addRow(self.status)
        self.jobs.refresh()

    # -- the table ------------------------------------------------------------------------
    def load(self, folder: str | Path) -> bool:
        """Show the results table of the cohort in ``folder``; False (and the reason in
        the status line) when it has none."""
        from napari_medattn.cohort import read_results
        from napari_medattn.errors import MedAttnError

        try:
            table = read_results(folder)
        except MedAttnError as error:
            self.status.setText(str(error))
            return False
        self.folder.setText(str(folder))
        self.results = table
        figures = [c for c in table.columns if c not in (*LEADING, "error", "error_kind",
                                                         "worker", "folder")
                   and not str(c).startswith("output_")]
        columns = [*LEADING, *figures, "error"]
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(table))
        self.table.setHorizontalHeaderLabels(columns)
        for r, (_, values) in enumerate(table.iterrows()):
            for c, column in enumerate(columns):
                item = QTableWidgetItem(_text(values.get(column)))
                if column == "case" and isinstance(values.get("error"), str):
                    item.setToolTip(values["error"])
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        done = int((table["status"] == "done").sum())
        self.status.setText(f"{len(table)} cases: {done} done, {len(table) - done} failed or "
                            f"not run. Click a row to open its case.")
        self.jobs.refresh()
        return True

    def selected_case(self) -> str | None:
        """The case id of the selected row, if any."""
        rows = self.table.selectionModel().selectedRows() if self.results is not None else []
        return str(self.results.iloc[rows[0].row()]["case"]) if rows else None

    def ready(self) -> bool:
        return getattr(self, "table", None) is not None and self.selected_case() is not None

    # -- opening a case --------------------------------------------------------------------
    def open_selected(self) -> Job | None:
        """Read the selected case's scan and outputs in a job and add them as layers."""
        case = self.selected_case()
        if case is None or self.jobs.busy:
            return None
        folder = self.folder.text()

        def work(progress, cancel) -> list[tuple]:
            from napari_medattn.cohort import load_case
            from napari_medattn.display.layers import volume_layer_data

            scan, outputs = load_case(folder, case)
            layers = [volume_layer_data(scan, "image")]
            for kind, volume in outputs.items():
                volume.meta["name"] = f"{case} {kind}"
                tags = {"cohort_case": case, "output": kind}
                layers.append(labels_layer_data(volume, MADE_BY, tags) if kind == "labels"
                              else heat_map_layer_data(volume, MADE_BY, tags))
            return layers

        self.status.setText(f"Opening {case}...")
        return self.jobs.start(work, f"Open {case}", lambda data: self._show(case, data))

    def _show(self, case: str, layer_data: list[tuple]) -> None:
        add_layers(self.viewer, layer_data, widget=self)
        self.status.setText(f"Opened {case}: {len(layer_data)} layers.")

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Cohort output folder",
                                                  self.folder.text())
        if folder:
            self.load(folder)


def _text(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, missing values empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    try:
        import pandas as pd

        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)

