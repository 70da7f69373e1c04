"""Loading a 300-slice 512x512 CT series: napari_medattn.io.read vs SimpleITK.

Writes the series (int16 HU stored as unsigned with RescaleIntercept -1024, realistic CT
tags, shuffled file names) to a temporary folder, then times, side by side in one run,
``read_volume(folder)`` against SimpleITK's ``ImageSeriesReader`` with
``GetGDCMSeriesFileNames`` (both end with a numpy array in HU). Each reader is warmed up
once (page cache) and then timed ``--repeats`` times, alternating. Checks equal voxels
and equal affine (SimpleITK origin/spacing/direction converted with ``affine_from_itk``).

Run: ``.venv/bin/python benchmarks/bench_dicom_load.py [--slices 300] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medattn.io import Volume, affine_from_itk, read_volume, write_dicom_series


def phantom(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """A CT-like body: air outside, soft tissue ellipse, bone ring, noise; int16 HU."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:slices, :size, :size]
    cy, cx = size / 2, size / 2
    radius = ((y - cy) / (0.38 * size)) ** 2 + ((x - cx) / (0.45 * size)) ** 2
    body = np.where(radius < 1.0, 40, -1000).astype(np.int16)
    volume = np.broadcast_to(body, (slices, size, size)).copy()
    volume[:, (radius[0] > 0.8) & (radius[0] < 0.9)] = 700 + (z.ravel()[:, None] % 50)
    volume += rng.normal(0, 12, size=volume.shape).astype(np.int16)
    return volume


def write_series(folder: Path, slices: int, size: int) -> Volume:
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.0, 1.25]
    affine[:3, 1] = [0.0, 0.78125, 0.0]
    affine[:3, 2] = [0.78125, 0.0, 0.0]
    affine[:3, 3] = [-199.6, -210.3, -512.5]
    volume = Volume(phantom(slices, size), affine, "CT", {"name": "bench"})
    names = [f"{k:08d}" for k in random.Random(1).sample(range(10**8), slices)]
    tags = {"Manufacturer": "BENCH", "KVP": "120", "ConvolutionKernel": "B30f",
            "BodyPartExamined": "CHEST", "PatientPosition": "HFS",
            "WindowCenter": "40", "WindowWidth": "400"}
    write_dicom_series(folder, volume, series_description="Thorax 1.25 B30f",
                       series_number=2, rescale_intercept=-1024, extra=tags,
                       file_names=[n + ".dcm" for n in names])
    return volume


def read_ours(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    volume = read_volume(folder)
    return volume.data, volume.affine


def read_simpleitk(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    affine = affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    return sitk.GetArrayFromImage(image), affine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        truth = write_series(folder, args.slices, args.size)
        print(f"wrote {args.slices} files of {args.size}x{args.size} in "
              f"{time.perf_counter() - start:.1f} s")
        readers = {"ours": read_ours, "simpleitk": read_simpleitk}
        results = {name: reader(folder) for name, reader in readers.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(args.repeats):
            for name, reader in readers.items():
                start = time.perf_counter()
                reader(folder)
                times[name].append(time.perf_counter() - start)
        ours, itk = results["ours"], results["simpleitk"]
        assert ours[0].dtype == np.int16, ours[0].dtype
        voxels_equal = np.array_equal(ours[0], itk[0]) and np.array_equal(ours[0], truth.data)
        affine_error = float(np.max(np.abs(ours[1] - itk[1])))
        truth_error = float(np.max(np.abs(ours[1] - truth.affine)))
        for name, values in times.items():
            print(f"{name:10s} median {statistics.median(values):.3f} s  "
                  f"min {min(values):.3f} s  ({len(values)} runs)")
        ratio = statistics.median(times["ours"]) / statistics.median(times["simpleitk"])
        print(f"FIGURE dicom_load_ours_s {statistics.median(times['ours']):.3f} s")
        print(f"FIGURE dicom_load_simpleitk_s {statistics.median(times['simpleitk']):.3f} s")
        print(f"FIGURE dicom_load_time_ours_over_simpleitk {ratio:.3f} ratio")
        print(f"FIGURE dicom_load_voxels_equal {int(voxels_equal)} bool")
        print(f"FIGURE dicom_load_affine_max_abs_diff_vs_simpleitk {affine_error:.2e} mm")
        print(f"FIGURE dicom_load_affine_max_abs_diff_vs_truth {truth_error:.2e} mm")
        if not voxels_equal or affine_error > 1e-4:
            raise SystemExit("Readers disagree: voxels or affine differ.")


if __name__ == "__main__":
    main()
