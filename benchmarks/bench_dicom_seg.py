"""DICOM-SEG write and read time for a 512 x 512 x 300 label map with 4 classes.

A synthetic CT series (300 axial slices of 512 x 512, 0.7 x 0.7 x 1.5 mm) is written with
:func:`napari_medattn.io.write_dicom_series` and read back; four ellipsoids (4 classes,
about 8 % of the voxels) are drawn on it. Then, side by side, each case ``--repeats`` times
after one warm-up (highdicom loads its DICOM standard tables on first use), median wall
time:

* ``write``: :func:`napari_medattn.io.dicom.seg.write_seg` (labels cut per source instance,
  highdicom's binary SEG, atomic file write); the source headers given, as the napari
  writer and the CLI have them from the open series, plus a row with them re-read;
* ``read onto scan``: :func:`read_seg` with the scan (labels on its grid, via the SEG's
  references to its instances);
* ``read own grid``: :func:`read_seg` without the scan (placed by its frame positions);
* peer ``highdicom get_volume``: ``hd.seg.segread`` + ``get_volume(combine_segments=True)``,
  what a highdicom user writes, without names, colours or the scan's grid;
* peer ``NIfTI``: nibabel writing and reading the same labels as ``.nii.gz`` (scale only).

Labels read back are checked equal to those written. Run::

    .venv/bin/python benchmarks/bench_dicom_seg.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import highdicom as hd
import numpy as np

from napari_medattn.io import Volume, read_volume, volume_like, write_dicom_series, write_nifti
from napari_medattn.io.dicom.seg import read_seg, write_seg
from napari_medattn.io.dicom.source import source_instances
from napari_medattn.io.nifti import read_nifti

CLASSES = [("background", "#000000"), ("liver", "#dd4411"), ("spleen", "#3cb44b"),
           ("kidney", "#4363d8"), ("lesion", "#ffe119")]


def _timed(function, repeats: int) -> tuple[float, object]:
    function()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # The series written (158 MB, and the caches and server storage) go when the run ends.
    with tempfile.TemporaryDirectory(prefix="bench_seg_") as temporary:
        run(Path(temporary), args)


def run(folder: Path, args: argparse.Namespace) -> None:
    affine = np.array([[0, 0, 0.7, -180], [0, 0.7, 0, -180], [1.5, 0, 0, -200],
                       [0, 0, 0, 1.0]])
    ct = np.full((args.slices, 512, 512), -1000, np.int16)
    write_dicom_series(folder / "ct", Volume(ct, affine, "CT"), rescale_intercept=-1024,
                       patient={"PatientName": "Bench^SEG", "PatientID": "B1"})
    scan = read_volume(folder / "ct")
    z, y, x = np.ogrid[:args.slices, :512, :512]
    labels = np.zeros(scan.spatial_shape, np.uint8)
    scale = args.slices / 300
    for value, (cz, cy, cx, rz, ry, rx) in enumerate(
            [(100, 200, 200, 40, 90, 80), (150, 300, 330, 30, 50, 50),
             (200, 250, 150, 35, 40, 30), (250, 120, 400, 10, 15, 15)], start=1):
        labels[((z - cz * scale) / (rz * scale)) ** 2 + ((y - cy) / ry) ** 2
               + ((x - cx) / rx) ** 2 < 1] = value
    drawn = volume_like(scan, labels, name="bench")
    drawn.meta["classes"] = CLASSES
    instances = source_instances(scan)
    seg_path = folder / "seg.dcm"
    print(f"label map {labels.shape}, {np.count_nonzero(labels) / labels.size:.1%} labelled")

    rows = {}
    rows["write"], _ = _timed(lambda: write_seg(seg_path, drawn, source=instances),
                              args.repeats)
    rows["write, headers re-read"], _ = _timed(lambda: write_seg(seg_path, drawn),
                                               args.repeats)
    rows["read onto scan"], back = _timed(lambda: read_seg(seg_path, reference=scan),
                                          args.repeats)
    assert np.array_equal(back.data, labels)
    rows["read own grid"], own = _timed(lambda: read_seg(seg_path), args.repeats)
    assert int(np.count_nonzero(own.data)) == int(np.count_nonzero(labels))
    rows["peer highdicom segread+get_volume"], _ = _timed(
        lambda: hd.seg.segread(seg_path).get_volume(combine_segments=True), args.repeats)
    nifti = folder / "labels.nii.gz"
    rows["peer NIfTI write (nibabel)"], _ = _timed(lambda: write_nifti(nifti, drawn),
                                                   args.repeats)
    rows["peer NIfTI read (nibabel)"], _ = _timed(
        lambda: np.asarray(read_nifti(nifti).data), args.repeats)
    print(f"SEG file {seg_path.stat().st_size / 1e6:.1f} MB, NIfTI "
          f"{nifti.stat().st_size / 1e6:.1f} MB")
    for name, seconds in rows.items():
        print(f"{name:40s} {seconds:7.3f} s")
    print(f"FIGURE dicom_seg_write_s {rows['write']:.3f} s")
    print(f"FIGURE dicom_seg_write_reread_headers_s {rows['write, headers re-read']:.3f} s")
    print(f"FIGURE dicom_seg_read_onto_scan_s {rows['read onto scan']:.3f} s")
    print(f"FIGURE dicom_seg_read_own_grid_s {rows['read own grid']:.3f} s")
    print(f"FIGURE dicom_seg_read_vs_highdicom "
          f"{rows['read own grid'] / rows['peer highdicom segread+get_volume']:.2f} ratio")


if __name__ == "__main__":
    main()
