"""Fusion figures: overlay resampling against SimpleITK, repaint and crosshair latency.

1. **Resampling a PET onto a CT grid**, ours (:func:`napari_medattn.fusion.align.overlay_on_grid`,
   the resampler's compiled loops) against SimpleITK's ``Resample`` (linear, default value
   0), both on the same number of threads (``--threads``, default 2), alternating runs,
   medians after one warm-up run each; the values are compared voxel for voxel, and the
   peak memory Python allocates during one more run of ours is traced (the float32 output
   is 315 MB; a float64 temporary of the CT grid's size would add 629 MB). Two cases: a
   PET stored in another axis order and direction (a RAS NIfTI against an LPS CT:
   axis-parallel grids) and an oblique PET (rotated 10 degrees about two axes).
2. **Repaint latency** in a real napari viewer (Xvfb, software OpenGL) with a
   512 x 512 x 300 CT and a 200 x 200 x 150 PET fused by the Fuse widget: time from a
   change of the fade slider, or of the overlay window, until the canvas has drawn.
3. **Crosshair move** with the three linked planes shown: time from a click (mouse press
   and release through napari's canvas events, on a random point of the CT, in the axial,
   coronal and sagittal view in turn: the other two views change slice, all three move
   their crosshair) until all three canvases have drawn. Also a move of the point on all
   three axes at once (``three_planes.move_to``, as a script would; no click does that).

Run from the repository root (a virtual display is started when there is none)::

    QT_API=pyqt6 .venv/bin/python benchmarks/bench_fusion.py [--repeats 3] [--trials 30]

Ends with ``FIGURE`` lines.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from napari_medattn.fusion.align import overlay_on_grid
from napari_medattn.io import Volume

CT_SHAPE = (300, 512, 512)  # canonical z, y, x
PET_SHAPE = (150, 200, 200)


def ct_volume() -> Volume:
    """A 512 x 512 x 300 CT grid, 0.98 mm in plane and 2 mm slices (canonical LPS)."""
    affine = np.zeros((4, 4))
    affine[:3, :3] = [[0, 0, 0.98], [0, 0.98, 0], [2.0, 0, 0]]
    affine[:3, 3] = [-250.0, -250.0, -300.0]
    affine[3, 3] = 1.0
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1500, CT_SHAPE, dtype=np.int16)
    return Volume(data, affine, "CT", {"name": "ct"})


def pet_volume(oblique: bool) -> Volume:
    """A 200 x 200 x 150 PET of 4 mm covering the CT, stored x-first and with x and y
    reversed (as a RAS NIfTI), shifted by a fraction of a voxel; optionally rotated."""
    affine = np.zeros((4, 4))
    affine[:3, :3] = [[-4.0, 0, 0], [0, -4.0, 0], [0, 0, 4.0]]
    affine[:3, 3] = [401.3, 398.7, -301.1]
    affine[3, 3] = 1.0
    if oblique:
        rotation = np.eye(4)
        rotation[:3, :3] = Rotation.from_euler("xz", [10, 10], degrees=True).as_matrix()
        affine = rotation @ affine
    rng = np.random.default_rng(1)
    data = (rng.random(PET_SHAPE[::-1], dtype=np.float32) * 10.0)
    return Volume(data, affine, "PT", {"name": "pet"})


def itk_image(volume: Volume | None, affine: np.ndarray, shape=None) -> sitk.Image:
    """ITK index (i, j, k) = array axes (0, 1, 2); the affine's columns are the directions.
    Without a volume: an empty float32 reference grid of ``shape``."""
    if volume is None:
        image = sitk.Image([int(n) for n in shape], sitk.sitkFloat32)
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(
            np.asarray(volume.data).transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    return image


def resampling(repeats: int) -> dict[str, float]:
    ct = ct_volume()
    reference = itk_image(None, ct.affine, CT_SHAPE)
    figures = {}
    for case, oblique in (("axis_parallel", False), ("oblique", True)):
        pet = pet_volume(oblique)
        moving = itk_image(pet, pet.affine)
        ours_s, itk_s, ours_cpu, itk_cpu = [], [], [], []
        for repeat in range(repeats + 1):  # the first of each is a warm-up, not counted
            start, cpu = time.perf_counter(), time.process_time()
            ours = overlay_on_grid(pet, ct)
            if repeat:
                ours_s.append(time.perf_counter() - start)
                ours_cpu.append(time.process_time() - cpu)
            start, cpu = time.perf_counter(), time.process_time()
            theirs = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                                   sitk.sitkFloat32)
            if repeat:
                itk_s.append(time.perf_counter() - start)
                itk_cpu.append(time.process_time() - cpu)
        expected = sitk.GetArrayViewFromImage(theirs).transpose(2, 1, 0)
        difference = np.abs(np.asarray(ours.data) - expected)
        differs = float((difference > 1e-4).mean())
        del ours
        tracemalloc.start()
        overlay_on_grid(pet, ct)
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        print(f"{case}: ours {statistics.median(ours_s):.2f} s, SimpleITK "
              f"{statistics.median(itk_s):.2f} s (runs {['%.2f' % t for t in ours_s]} / "
              f"{['%.2f' % t for t in itk_s]}; CPU {statistics.median(ours_cpu):.2f} s vs "
              f"{statistics.median(itk_cpu):.2f} s), max |diff| {difference.max():.2e}, "
              f"voxels differing by > 1e-4: {differs:.2e}, peak traced memory of ours "
              f"{peak_mb:.0f} MB")
        figures[f"fusion_resample_{case}_ours_s"] = statistics.median(ours_s)
        figures[f"fusion_resample_{case}_simpleitk_s"] = statistics.median(itk_s)
        figures[f"fusion_resample_{case}_ratio"] = (statistics.median(ours_s)
                                                   / statistics.median(itk_s))
        # CPU seconds (all threads): what each costs, less sensitive to other load than
        # wall time on a shared machine.
        figures[f"fusion_resample_{case}_cpu_ratio"] = (statistics.median(ours_cpu)
                                                       / statistics.median(itk_cpu))
        figures[f"fusion_resample_{case}_max_abs_diff"] = float(difference.max())
        figures[f"fusion_resample_{case}_fraction_differing"] = differs
        figures[f"fusion_resample_{case}_peak_traced_mb"] = peak_mb
        del theirs, expected, difference
    return figures


def _until_drawn(app, canvases, change) -> float:
    """Seconds from ``change()`` until every canvas in ``canvases`` has drawn: the clock
    stops when the event-loop pass in which the last of them drew returns, so it includes
    Qt composing and flushing the window in that pass."""
    drawn: set[int] = set()
    handlers = []
    for n, canvas in enumerate(canvases):
        def on_draw(event, n=n):
            drawn.add(n)
        canvas.events.draw.connect(on_draw)
        handlers.append((canvas, on_draw))
    start = time.perf_counter()
    change()
    while len(drawn) < len(canvases):
        app.processEvents()
        if time.perf_counter() - start > 10:
            raise RuntimeError("a canvas did not draw within 10 s")
    elapsed = time.perf_counter() - start
    for canvas, handler in handlers:
        canvas.events.draw.disconnect(handler)
    return elapsed


def _click(qt_viewer, model, world) -> None:
    """Press and release the left button over ``world`` (mm) in one plane's canvas."""
    scene = qt_viewer.canvas._scene_canvas
    displayed = list(model.dims.displayed)
    pixel = qt_viewer.canvas.view.scene.transform.map(
        [world[displayed[1]], world[displayed[0]], 0, 1])
    pos = pixel[:2] / pixel[3]
    if np.any(pos < 0) or np.any(pos >= scene.size):
        raise RuntimeError(f"the click at {world} mm falls outside the canvas")
    scene.events.mouse_press(pos=pos, button=1, modifiers=())
    scene.events.mouse_release(pos=pos, button=1, modifiers=())


def viewer_latency(trials: int) -> dict[str, float]:
    from napari_medattn.launch import needs_virtual_display, start_virtual_display

    # Under xvfb-run there is a display already. Starting a second one and stopping it
    # while the QApplication still lived made the process crash at exit (Qt tore down its
    # connection to an X server that was gone).
    display = start_virtual_display() if needs_virtual_display() else None
    try:
        import napari
        from qtpy.QtWidgets import QApplication

        from napari_medattn.display.layers import volume_layer_data
        from napari_medattn.widgets.fuse import FuseWidget
        from napari_orthogonal_views.ortho_view_manager import _get_manager

        from napari_medattn.widgets.three_planes import move_to, plane_models, set_three_planes

        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        for volume in (ct_volume(), pet_volume(False).canonical()):
            viewer._add_layer_from_data(*volume_layer_data(volume))
        widget = FuseWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.base.setCurrentText("ct")
        widget.overlay.setCurrentText("pet")
        widget.run()
        for _ in range(20):
            app.processEvents()
        main_canvas = viewer.window._qt_viewer.canvas._scene_canvas
        rng = np.random.default_rng(2)
        # napari's own redraw with nothing changed: the floor of any repaint here (software
        # OpenGL composes the whole window on the CPU).
        idle = [_until_drawn(app, [main_canvas], main_canvas.update) for _ in range(trials)]
        fade, window = [], []
        for trial in range(trials):
            fade.append(_until_drawn(app, [main_canvas],
                                     lambda: widget.fade.setValue(int(rng.integers(0, 101)))))
            window.append(_until_drawn(app, [main_canvas],
                                       lambda: widget.high.setValue(float(3 + trial % 10))))
        set_three_planes(viewer, True)
        for _ in range(20):
            app.processEvents()
        models = plane_models(viewer)
        manager = _get_manager(viewer)
        canvases = [main_canvas, manager.bottom_widget.qt_viewer.canvas._scene_canvas,
                    manager.right_widget.qt_viewer.canvas._scene_canvas]
        low, high = np.array([-290.0, -240.0, -240.0]), np.array([290.0, 240.0, 240.0])
        idle3 = [_until_drawn(app, canvases, lambda: [c.update() for c in canvases])
                 for _ in range(trials)]
        qt_viewers = [manager._original_qt_viewer, manager.bottom_widget.qt_viewer,
                      manager.right_widget.qt_viewer]
        print("canvases (width x height, pixels): axial {}, coronal {}, sagittal {}".format(
            *["%d x %d" % tuple(canvas.size) for canvas in canvases]))
        cross, cross_cpu, point3d = [], [], []
        for trial in range(trials):
            point = rng.uniform(low, high)  # world (z, y, x) mm inside the CT
            view = trial % 3
            cpu = time.process_time()
            cross.append(_until_drawn(app, canvases, lambda: _click(
                qt_viewers[view], models[view], point)))
            cross_cpu.append(time.process_time() - cpu)
            point = rng.uniform(low, high)
            point3d.append(_until_drawn(app, canvases, lambda: move_to(models[0], point)))
        viewer.close()
        app.processEvents()
    finally:
        if display is not None:
            display.stop()
    for name, values in (("redraw, nothing changed", idle), ("fade", fade),
                         ("window", window), ("three canvases redraw, nothing changed", idle3),
                         ("crosshair, click in each view in turn", cross),
                         ("crosshair, process CPU time per click (all threads)", cross_cpu),
                         ("crosshair, point moved on all three axes", point3d)):
        print(f"{name}: median {1000 * statistics.median(values):.1f} ms, max "
              f"{1000 * max(values):.1f} ms over {len(values)} changes")
    return {"fusion_redraw_unchanged_median_ms": 1000 * statistics.median(idle),
            "fusion_repaint_fade_median_ms": 1000 * statistics.median(fade),
            "fusion_repaint_window_median_ms": 1000 * statistics.median(window),
            "fusion_three_redraw_unchanged_median_ms": 1000 * statistics.median(idle3),
            "fusion_crosshair_move_median_ms": 1000 * statistics.median(cross),
            "fusion_crosshair_move_max_ms": 1000 * max(cross),
            "fusion_crosshair_move_cpu_median_ms": 1000 * statistics.median(cross_cpu),
            "fusion_crosshair_point3d_median_ms": 1000 * statistics.median(point3d)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--skip-viewer", action="store_true")
    parser.add_argument("--skip-resample", action="store_true")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for both resamplers (default 2)")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    torch.set_num_threads(args.threads)  # the resampler's thread pool follows torch
    figures = {}
    if not args.skip_resample:
        figures.update(resampling(args.repeats))
    if not args.skip_viewer:
        figures.update(viewer_latency(args.trials))
    for name, value in figures.items():
        unit = ("ratio" if name.endswith("ratio") else "s" if name.endswith("_s")
                else "ms" if name.endswith("_ms") else "MB" if name.endswith("_mb")
                else "value")
        print(f"FIGURE {name} {value:.4g} {unit}")


if __name__ == "__main__":
    main()
