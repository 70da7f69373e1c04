"""Cohort results browser: the table of a real cohort run (segment on three small scans,
one corrupt), and a click on a row opens that case's scan and its label map as layers on
the scan's geometry, equal to the files; a failed case's error is its row's tooltip; a
folder without results is one sentence.

Set MEDATTN_SCREENSHOT_DIR=docs/screenshots to keep the screenshot for the docs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from qtpy.QtCore import Qt

sys.path.insert(0, str(Path(__file__).parents[1] / "cohort"))
from cohort_data import make_scans  # noqa: E402  (tests/cohort/cohort_data.py)

from napari_medattn.cohort import run  # noqa: E402
from napari_medattn.io import read_volume  # noqa: E402
from napari_medattn.widgets.cohort_results import CohortResultsWidget  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A segment cohort of three small scans (case_1 corrupt) with the built-in default
    model, run on an in-process Dask cluster (a thread: quick to start for a GUI test)."""
    from distributed import Client, LocalCluster

    root = tmp_path_factory.mktemp("cohort")
    make_scans(root / "scans", count=3, corrupt="case_1")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        run(root / "scans", "segment", root / "out", client=client, progress=False,
            task_options=["--device", "cpu"])
    return root / "out"


def test_a_click_on_a_row_opens_the_case_scan_with_its_labels(make_napari_viewer, qtbot,
                                                              cohort, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 850)
    widget = CohortResultsWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right", name="Cohort results")
    assert not widget.run_button.isEnabled()
    assert widget.load(cohort)
    assert widget.table.rowCount() == 3
    header = [widget.table.horizontalHeaderItem(c).text()
              for c in range(widget.table.columnCount())]
    assert header[:3] == ["case", "status", "runtime_s"]
    assert "volume_ml_grey_matter" in header and header[-1] == "error"
    assert [widget.table.item(r, 1).text() for r in range(3)] == ["done", "failed", "done"]
    assert widget.table.item(1, 0).toolTip().startswith("case_1.nii.gz is not a readable NIfTI")
    assert "3 cases: 2 done, 1 failed or not run" in widget.status.text()

    rect = widget.table.visualItemRect(widget.table.item(2, 0))
    qtbot.mouseClick(widget.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: widget.job is not None and widget.job.finished, timeout=60_000)
    qtbot.wait(50)
    assert [layer.name for layer in viewer.layers] == ["case_2", "case_2 labels"]
    scan, labels = viewer.layers
    expected_scan = read_volume(cohort.parents[0] / "scans" / "case_2.nii.gz").canonical()
    expected_labels = read_volume(cohort / "cases" / "case_2" /
                                  "case_2_labels.nii.gz").canonical()
    np.testing.assert_array_equal(np.asarray(scan.data), np.asarray(expected_scan.data))
    np.testing.assert_array_equal(np.asarray(labels.data), np.asarray(expected_labels.data))
    np.testing.assert_allclose(labels.scale, scan.scale)
    np.testing.assert_allclose(labels.translate, scan.translate)
    assert "Opened case_2: 2 layers." == widget.status.text()
    # The model's class names and colours (as the Segment widget shows them).
    assert list(labels.features["class"]) == ["background", "CSF", "grey matter",
                                              "white matter"]

    viewer.layers.selection.active = scan
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    folder = os.environ.get("MEDATTN_SCREENSHOT_DIR")
    PILImage.fromarray(shot).save(Path(folder or tmp_path) / "cohort_results.png")
    assert shot.shape[0] > 500


def test_a_folder_without_results_is_one_sentence(make_napari_viewer, tmp_path):
    widget = CohortResultsWidget(make_napari_viewer())
    assert not widget.load(tmp_path)
    assert widget.status.text() == (f"{tmp_path} holds no cohort results (results.parquet "
                                    f"or results.csv).")
