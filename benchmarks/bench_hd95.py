"""HD95 of a 256^3 mask pair: napari-medattn against MONAI, side by side in one run.

The pair imitates a reference and a decent prediction of it: a brain-sized ellipsoid whose
radius is deformed by a smooth random field, and the same shape with a further small smooth
deformation and a shift of a few voxels. Both are scored with the same anisotropic spacing by

* ours: ``napari_medattn.metrics.evaluate_pair`` on the label maps (which computes every
  metric of the class: Dice, IoU, HD95, HD, ASSD, ..., not only HD95);
* MONAI: ``HausdorffDistanceMetric(percentile=95)`` on the one-hot tensors it takes;
* once, for reference, the dense method: SciPy's ``distance_transform_edt`` of each surface
  over the masks' bounding box (what the tests compare against).

Runs alternate (MONAI, ours) ``--repeats`` times; the ratio is of the medians. Ends with
``FIGURE`` lines. Usage: ``python benchmarks/bench_hd95.py [--size 256] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from scipy import ndimage

from napari_medattn.metrics import evaluate_pair

SPACING = (1.2, 0.9, 1.0)  # mm per array axis, anisotropic on purpose


def smooth_field(size: int, seed: int, amplitude: float) -> np.ndarray:
    """A random field, smooth at the scale of a few cm, with the given standard deviation."""
    rng = np.random.default_rng(seed)
    field = ndimage.zoom(rng.standard_normal((8, 8, 8)), size / 8, order=3)[:size, :size, :size]
    return field * (amplitude / field.std())


def deformed_ellipsoid(size: int, field: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """A brain-sized ellipsoid (radii 0.34, 0.40, 0.30 of the grid) whose radius is
    scaled by ``1 + field``, centred ``shift`` voxels off the grid centre."""
    axes = [np.arange(size, dtype=np.float32) - size / 2 - s for s in shift]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    radius = np.sqrt((z / (0.34 * size)) ** 2 + (y / (0.40 * size)) ** 2
                     + (x / (0.30 * size)) ** 2)
    return radius < 1.0 + field


def dense_edt_hd95(prediction: np.ndarray, reference: np.ndarray) -> float:
    """HD95 (mm) from SciPy distance transforms of each surface over the bounding box."""
    from napari_medattn.metrics import surface_voxels

    box = ndimage.find_objects((prediction | reference).astype(np.uint8))[0]
    box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
    surface_pred = surface_voxels(prediction[box])
    surface_ref = surface_voxels(reference[box])
    to_ref = ndimage.distance_transform_edt(~surface_ref, sampling=SPACING)[surface_pred]
    to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=SPACING)[surface_ref]
    return max(float(np.percentile(to_ref, 95)), float(np.percentile(to_pred, 95)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from monai.metrics import HausdorffDistanceMetric

    torch.set_num_threads(1)  # both sides single-threaded on a shared 2-core machine
    # The reference's shape varies by ~8% of its radius; the prediction follows it up to a
    # further ~3% local error and a shift of a few voxels, as a decent model would.
    shape = smooth_field(args.size, seed=1, amplitude=0.08)
    reference = deformed_ellipsoid(args.size, shape, shift=(0, 0, 0))
    prediction = deformed_ellipsoid(args.size, shape + smooth_field(args.size, 2, 0.03),
                                    shift=(2, -1, 1))
    ref_labels, pred_labels = reference.astype(np.uint8), prediction.astype(np.uint8)
    one_hot = [torch.from_numpy(np.stack([~m, m])[None]) for m in (prediction, reference)]
    print(f"masks {args.size}^3, spacing {SPACING} mm, reference {reference.sum()} voxels, "
          f"prediction {prediction.sum()} voxels")

    monai_times, our_times = [], []
    for _ in range(args.repeats):
        metric = HausdorffDistanceMetric(percentile=95, include_background=False)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecation notice
            monai_value = float(metric(*one_hot, spacing=list(SPACING))[0, 0])
        monai_times.append(time.perf_counter() - start)

        start = time.perf_counter()
        [scores] = evaluate_pair(pred_labels, ref_labels, spacing=SPACING)
        our_times.append(time.perf_counter() - start)
        print(f"  MONAI {monai_times[-1]:.3f} s  ours {our_times[-1]:.3f} s  "
              f"HD95 MONAI {monai_value:.6f} mm  ours {scores.hd95_mm:.6f} mm")

    start = time.perf_counter()
    edt_value = dense_edt_hd95(prediction, reference)
    edt_s = time.perf_counter() - start
    print(f"  SciPy EDT on the bounding box {edt_s:.3f} s  HD95 {edt_value:.6f} mm")

    monai_s, ours_s = statistics.median(monai_times), statistics.median(our_times)
    difference = abs(scores.hd95_mm - monai_value)
    print(f"FIGURE hd95_monai_s {monai_s:.3f} s")
    print(f"FIGURE hd95_ours_s {ours_s:.3f} s")
    print(f"FIGURE hd95_time_ours_over_monai {ours_s / monai_s:.3f} ratio")
    print(f"FIGURE hd95_scipy_edt_bbox_s {edt_s:.3f} s")
    print(f"FIGURE hd95_mm {scores.hd95_mm:.6f} mm")
    print(f"FIGURE hd95_abs_difference_vs_monai {difference:.2e} mm")


if __name__ == "__main__":
    main()
