"""Make the screenshots of the user guide in ``docs/screenshots/`` (run from the repository root)::

    .venv/bin/python scripts/make_screenshots.py            # all of them
    .venv/bin/python scripts/make_screenshots.py views open # only these

Each shot opens what it needs itself, so any subset can be remade. Without a display a
virtual one is started (as ``python -m napari_medattn.launch`` does). Everything runs on
the sample data shipped in the package; nothing is installed or downloaded (the Fine-tune
shot saves its model into a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from napari_medattn.launch import (
    WINDOW_SIZE,
    dock_plugin_widgets,
    needs_virtual_display,
    open_scan,
    save_window_screenshot,
    start_virtual_display,
)

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "docs" / "screenshots"
SAMPLES = ROOT / "src" / "napari_medattn" / "sample_data"
# dims.order per view (the last two axes are displayed) and the world axis that is sliced.
VIEWS = {"axial": ((0, 1, 2), 0), "coronal": ((1, 0, 2), 1), "sagittal": ((2, 0, 1), 2)}
# Slice shown per sliced world axis, in patient mm (z: 10 mm superior, y: 10 mm anterior,
# x: 20 mm right of the origin): through the ventricles on the MNI152 template.
VIEW_SLICE_MM = {0: 10.0, 1: -10.0, 2: -20.0}


def wait_until(condition: Callable[[], bool], timeout_s: float = 600.0) -> None:
    """Process Qt events until ``condition()`` holds (work runs in napari workers)."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the viewer did not reach the expected state in time")
        QApplication.processEvents()
        time.sleep(0.05)


def wait_for_job(widget, what: str, timeout_s: float = 1800.0) -> None:
    """Wait until the widget's job has finished; raise unless it finished as ``done``."""
    wait_until(lambda: widget.job is not None and widget.job.finished, timeout_s)
    if widget.job.outcome != "done":
        raise RuntimeError(f"{what} ended {widget.job.outcome}")


def grid(viewer):
    """napari's grid mode settings (``viewer.canvas.grid`` since napari 0.9, which
    deprecates ``viewer.grid``; the plugin supports napari 0.6 and later)."""
    return viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid


def fresh_view(viewer) -> None:
    """No layers, the axial view, the whole world in sight."""
    viewer.layers.clear()
    grid(viewer).enabled = False
    viewer.dims.order = VIEWS["axial"][0]


@contextlib.contextmanager
def only_docks(viewer, *shown) -> Iterator[None]:
    """Hide every docked widget except ``shown`` while the block runs."""
    kept = [_dock_of(widget) for widget in shown]
    docks = [dock for _, dock in _docks(viewer) if not any(dock is k for k in kept)]
    for dock in docks:
        dock.hide()
    try:
        yield
    finally:
        for dock in docks:
            dock.show()


def _dock_of(widget):
    # A docked widget is Qt, or magicgui with its Qt widget as .native; the Qt widget's
    # parent is the dock.
    return getattr(widget, "native", widget).parent()


def _docks(viewer):
    """``(widget, dock)`` of every widget napari has docked."""
    return [(widget, _dock_of(widget)) for widget in viewer.window.dock_widgets.values()]


def main_window(viewer, widgets: dict, out: Path) -> None:
    """The window as ``make run`` opens it: the MNI152 T1 and every widget docked."""
    fresh_view(viewer)
    open_scan(viewer, None)
    viewer.reset_view()
    save_window_screenshot(viewer, out / "main_window.png")


def open_series(viewer, widgets: dict, out: Path) -> None:
    """A NIfTI file and a DICOM series of the same head, side by side in patient mm: the
    1 mm MNI152 T1 and the 2 x 2 x 4 mm DICOM series written from it (grid mode, one
    slice position for both). The widgets are hidden: the canvas is the subject.
    """
    with only_docks(viewer):
        fresh_view(viewer)
        open_scan(viewer, str(SAMPLES / "mni152_t1.nii.gz"))
        open_scan(viewer, str(SAMPLES / "mr_series"))
        grid(viewer).enabled = True
        viewer.dims.set_point(0, VIEW_SLICE_MM[0])
        viewer.reset_view()
        save_window_screenshot(viewer, out / "open_series.png")


def views(viewer, widgets: dict, out: Path) -> None:
    """The three radiological views of the T1 with the tissue label map on top (canvas only)."""
    fresh_view(viewer)
    open_scan(viewer, None)
    viewer.open_sample("napari-medattn", "mni152_tissue")
    viewer.layers["mni152_tissue_labels"].opacity = 0.35
    for name, (order, sliced) in VIEWS.items():
        viewer.dims.order = order
        viewer.dims.set_point(sliced, VIEW_SLICE_MM[sliced])
        viewer.reset_view()
        viewer.screenshot(str(out / f"view_{name}.png"), canvas_only=True, flash=False)


def window_level(viewer, widgets: dict, out: Path) -> None:
    """Window/Level on the pydicom CT slice with the bone preset (Window/Level dock only)."""
    widget = widgets["Window/Level"]
    fresh_view(viewer)
    open_scan(viewer, str(SAMPLES / "CT_small.dcm"))
    with only_docks(viewer, widget):
        widget.preset.value = "bone"  # a magicgui form
        viewer.reset_view()
        save_window_screenshot(viewer, out / "window_level.png")


def segment(viewer, widgets: dict, out: Path) -> None:
    """The Segment widget after a run of the default built-in model on the MNI152 T1."""
    widget = widgets["Segment"]
    fresh_view(viewer)
    open_scan(viewer, None)
    wait_until(lambda: widget.run_button.isEnabled())  # the model loads when idle
    widget.run_button.click()
    wait_for_job(widget, "segmentation")
    viewer.dims.set_point(0, 20.0)
    viewer.reset_view()
    save_window_screenshot(viewer, out / "segment_widget.png")


def finetune(viewer, widgets: dict, out: Path, steps: int = 8) -> None:
    """The Fine-tune widget after fine-tuning the default model on the MNI152 T1 with the
    template's tissue labels (standing in for labels a user corrected).

    The new model goes to a temporary user model folder (``XDG_DATA_HOME``, which the
    per-user model folder follows on Linux), so making the screenshot installs nothing; the
    other docked widgets are hidden while it is taken.
    """
    widget = widgets["Fine-tune"]
    fresh_view(viewer)
    open_scan(viewer, None)
    viewer.open_sample("napari-medattn", "mni152_tissue")
    saved = os.environ.get("XDG_DATA_HOME")
    with tempfile.TemporaryDirectory(prefix="napari-medattn-data-") as folder, \
            only_docks(viewer, widget):
        os.environ["XDG_DATA_HOME"] = folder
        try:
            widget.refresh_models()
            widget.image.setCurrentText("mni152_t1")
            widget.labels.setCurrentText("mni152_tissue_labels")
            widget.steps.setValue(steps)
            widget.device.setCurrentText("cpu")
            started = time.monotonic()
            widget.start_button.click()
            wait_for_job(widget, "fine-tuning")
            print(f"finetune: {time.monotonic() - started:.0f} s; status: "
                  f"{widget.status.text()}")
            viewer.layers["mni152_tissue_labels"].visible = False
            viewer.dims.set_point(0, 20.0)
            viewer.reset_view()
            save_window_screenshot(viewer, out / "finetune_widget.png")
        finally:
            if saved is None:
                del os.environ["XDG_DATA_HOME"]
            else:
                os.environ["XDG_DATA_HOME"] = saved


@contextlib.contextmanager
def inspector_on_mni152(viewer, widgets: dict, model: str, method: str) -> Iterator:
    """The Attention inspector, alone, on the MNI152 T1 on the CPU with ``model`` and
    ``method`` chosen (the method list fills once the model has loaded); yields it."""
    widget = widgets["Attention inspector"]
    fresh_view(viewer)
    open_scan(viewer, None)
    with only_docks(viewer, widget):
        widget.image.setCurrentText("mni152_t1")
        widget.device.setCurrentText("cpu")
        widget.model.setCurrentText(model)
        wait_until(lambda: widget.method.findText(method) >= 0)
        widget.method.setCurrentText(method)
        yield widget


def inspector(viewer, widgets: dict, out: Path) -> None:
    """The Attention inspector on the MNI152 T1: what a brain voxel attends to in a decoder
    block of the built-in DSSA-UNet (query map, routed regions outlined, kept tokens)."""
    with inspector_on_mni152(viewer, widgets, "dssa-unet-brain-tissue", "query") as widget:
        widget.layer.setCurrentText("decoder.1.blocks.0.attn")
        wait_until(widget.run_button.isEnabled)
        widget.run_button.click()
        wait_until(lambda: widget.queries.explorer is not None)
        point = _query_point_on_tissue(viewer, widget)
        widget.queries.query_point(point)
        viewer.dims.set_point(0, point[2])
        viewer.layers.selection.active = next(
            layer for layer in viewer.layers if layer.name.endswith("(mean of heads) attention"))
        viewer.reset_view()
        save_window_screenshot(viewer, out / "inspector_query.png")


def gradcam(viewer, widgets: dict, out: Path) -> None:
    """The Attention inspector after a Grad-CAM map of the default model for grey matter
    on the MNI152 T1, with its faithfulness numbers (about 6x the map's own time)."""
    with inspector_on_mni152(viewer, widgets, "attention-unet-brain-tissue",
                             "gradcam") as widget:
        widget.explanations.target.setCurrentText("grey matter")
        widget.explanations.faithfulness.setChecked(True)
        wait_until(widget.run_button.isEnabled)
        widget.run_button.click()
        wait_for_job(widget, "Grad-CAM")
        viewer.dims.set_point(0, 20.0)
        save_window_screenshot(viewer, out / "inspector_gradcam.png")


def registration(viewer, widgets: dict, out: Path) -> None:
    """The Register widget after a rigid run on nibabel's anatomical pair (the copy moved by
    Euler angles 0.1, 0.2, 0.3 rad and 3, 4, 5 mm): the fixed scan green, the moving scan
    magenta where the result places it (grey where they agree), the QA table."""
    widget = widgets["Register"]
    fresh_view(viewer)
    for name in ("nibabel_anatomical", "nibabel_anatomical_moved"):
        open_scan(viewer, str(SAMPLES / f"{name}.nii.gz"))
    with only_docks(viewer, widget):
        widget.fixed.setCurrentText("nibabel_anatomical")
        widget.moving.setCurrentText("nibabel_anatomical_moved")
        widget.method.setCurrentText("rigid")
        widget.device.setCurrentText("cpu")
        widget.run_button.click()
        wait_for_job(widget, "registration")
        fixed = viewer.layers["nibabel_anatomical"]
        moving = viewer.layers["nibabel_anatomical_moved"]
        fixed.colormap, moving.colormap, moving.blending = "green", "magenta", "additive"
        low, high = fixed.extent.world[:, 0]
        viewer.dims.set_point(0, (low + high) / 2)
        viewer.reset_view()
        save_window_screenshot(viewer, out / "register_widget.png")


def _query_point_on_tissue(viewer, widget) -> tuple[float, float, float]:
    """The click (LPS mm) whose attention falls most on brain tissue of its own slice.

    Candidates lie in the brain on four axial slices; shown is the one whose attention
    falls most on tissue of the clicked slice, so the clicked voxel (cyan cross) and what
    it attends to are in the same picture (the sparse DSSA keeps a few keys per voxel;
    most clicks attend to other slices).
    """
    import numpy as np

    scan = viewer.layers["mni152_t1"].metadata["medattn_geometry"]
    image = np.asarray(scan.data, dtype=np.float32)

    def on_tissue(point):
        index = round(float(np.linalg.solve(scan.affine, [0.0, 0.0, point[2], 1.0])[0]))
        weights = widget.queries.explorer.query(point, widget.layer.currentText()).attention
        return float(weights.canonical().data[index][image[index] > image[index].mean()].sum())

    candidates = [(x, y, z) for z in (5.0, 15.0, 25.0, 35.0) for x in (-40.0, -20.0, 20.0, 40.0)
                  for y in (-50.0, -20.0, 10.0, 40.0)]
    return max(candidates, key=on_tissue)


def multimodal(viewer, widgets: dict, out: Path) -> None:
    """The Multimodal segment widget after a run of dmaf-brain-tumour on a synthetic case
    (held-out seed 900000, 2 mm), its four contrasts written as NIfTI files named like a
    BraTS case so the widget assigns them by name (Multimodal segment dock only)."""
    from napari_medattn.io import write_nifti
    from napari_medattn.training.multimodal_synthesis import synthetic_multimodal_case

    widget = widgets["Multimodal segment"]
    case = synthetic_multimodal_case(900_000)
    fresh_view(viewer)
    with tempfile.TemporaryDirectory() as folder:
        for key, image in case.images.items():
            open_scan(viewer, str(write_nifti(Path(folder) / f"case_{key}.nii.gz", image)))
        with only_docks(viewer, widget):
            wait_until(lambda: widget.run_button.isEnabled())
            widget.run_button.click()
            wait_for_job(widget, "multimodal segmentation")
            centre = case.labels.meta["lesion"]["centre_mm"]  # LPS mm; world is (z, y, x)
            viewer.dims.set_point(0, float(centre[2]))
            viewer.reset_view()
            save_window_screenshot(viewer, out / "multimodal_widget.png")


#: Shots by name, in the order they are made.
#: A synthetic FLAIR-like scan the classifier never saw (seeds of its data start at 100000),
#: holding a tumour-like lesion: the Classify shot's subject.
CLASSIFY_SEED = 300_001


def classify_shot(viewer, widgets: dict, out: Path) -> None:
    """The Detect widget's Classify row: the shipped classifier and its Grad-CAM heat map on
    a synthetic FLAIR-like scan with a lesion (written to a temporary NIfTI and opened with
    the plugin's reader), the axial slice through the largest lesion."""
    import numpy as np

    from napari_medattn.io import write_nifti
    from napari_medattn.training.lesion_synthesis import synthetic_lesion_case

    widget = widgets["Detect"]
    case = synthetic_lesion_case(CLASSIFY_SEED, max_lesions=2)
    largest = max(case.lesions, key=lambda d: float(np.max(d.size_mm)))
    fresh_view(viewer)
    with tempfile.TemporaryDirectory() as folder, only_docks(viewer, widget):
        path = Path(folder) / "synthetic_flair.nii.gz"
        write_nifti(path, case.image)
        open_scan(viewer, str(path))
        widget.image.setCurrentText(viewer.layers[-1].name)
        widget.device.setCurrentText("cpu")
        widget.heatmap.setCurrentText("gradcam")
        wait_until(widget.classify_button.isEnabled)  # the classifier loads when idle
        widget.classify_button.click()
        wait_for_job(widget, "classification")
        viewer.dims.set_point(0, float(largest.centre_mm[2]))
        viewer.reset_view()
        save_window_screenshot(viewer, out / "detect_classify.png")


def dicom_browser(viewer, widgets: dict, out: Path) -> None:
    """The DICOM browser against a throw-away local Orthanc holding the sample MR series:
    searched, retrieved and opened, with a labels layer drawn on it ready to send back as
    SEG + SR. Needs Orthanc with its DICOMweb plugin (Debian orthanc, orthanc-dicomweb)."""
    import numpy as np

    from napari_medattn.display.layers import GEOMETRY_KEY
    from napari_medattn.pacs import Connection, store
    from napari_medattn.pacs.orthanc import local_orthanc, orthanc_available

    if not orthanc_available():
        raise RuntimeError("the DICOM browser shot needs Orthanc with its DICOMweb plugin")
    widget = widgets["DICOM browser"]
    fresh_view(viewer)
    with tempfile.TemporaryDirectory() as folder, \
            local_orthanc(Path(folder) / "orthanc", "doc", "doc-password") as url:
        os.environ["MEDATTN_CACHE_DIR"] = str(Path(folder) / "cache")
        store(Connection(url, username="doc", password="doc-password"),
              sorted((SAMPLES / "mr_series").glob("*.dcm")))
        widget.url.setText(url)
        widget.auth.setCurrentText("basic")
        widget.user.setText("doc")
        widget.secret.setText("doc-password")
        widget.modality.setCurrentText("MR")
        widget.search()
        wait_for_job(widget, "search")
        widget.table.selectRow(0)
        widget.run_button.click()
        wait_for_job(widget, "retrieval")
        scan = viewer.layers[-1]
        values = np.asarray(scan.data)
        viewer.add_labels((values > np.percentile(values, 97)).astype(np.uint8),
                          name="bright", scale=scan.scale, translate=scan.translate,
                          units=scan.units,
                          metadata={GEOMETRY_KEY: scan.metadata[GEOMETRY_KEY]})
        with only_docks(viewer, widget):
            viewer.reset_view()
            save_window_screenshot(viewer, out / "dicom_browser.png")


SHOTS = {"main": main_window, "open": open_series, "views": views,
         "window_level": window_level, "segment": segment, "finetune": finetune,
         "inspector": inspector, "gradcam": gradcam, "register": registration,
         "classify": classify_shot, "dicom_browser": dicom_browser, "multimodal": multimodal}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shots", nargs="*", metavar="NAME",
                        help=f"shots to make, of {', '.join(SHOTS)} (default: all)")
    parser.add_argument("--out", type=Path, default=SCREENSHOTS,
                        help="folder for the PNG files (default: docs/screenshots)")
    arguments = parser.parse_args(argv)
    names = arguments.shots or list(SHOTS)
    unknown = [name for name in names if name not in SHOTS]
    if unknown:
        parser.error(f"unknown shot {', '.join(unknown)}; choose from {', '.join(SHOTS)}")
    arguments.out.mkdir(parents=True, exist_ok=True)
    display = start_virtual_display() if needs_virtual_display() else None
    import napari

    try:
        viewer = napari.Viewer(title="napari-medattn")
        viewer.window.resize(*WINDOW_SIZE)
        widgets = dock_plugin_widgets(viewer)
        for name in names:
            started = time.monotonic()
            SHOTS[name](viewer, widgets, arguments.out)
            print(f"{name}: {time.monotonic() - started:.0f} s")
        viewer.close()
    finally:
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
