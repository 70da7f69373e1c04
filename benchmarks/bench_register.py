"""Registration figures: ours against SimpleITK (rigid/affine) and ANTsPy SyN (deformable).

1. **Rigid and affine on the nibabel pair** (``anatomical.nii`` and nibabel's rigidly moved
   copy, Euler angles 0.1, 0.2, 0.3 rad and translation 3, 4, 5 mm) and on a
   cross-contrast pair (a T2-like rendering of the moved copy: brain intensities inverted,
   same known motion). TRE = mean distance over every fixed voxel between the found and the
   true transform (mm); time = wall time of the call. Ours: Mattes MI, levels 4, 2, 1,
   L-BFGS. SimpleITK: ImageRegistrationMethod, Mattes MI (32 bins, all voxels), shrink
   4, 2, 1 with smoothing 2, 1, 0 voxels, regular-step gradient descent, centred
   geometric initialisation, Euler3D (rigid) or Affine.
2. **Deformable on a 2 mm MNI152 pair**: the MNI152 T1 at 2 mm, moved by a held-out
   smooth diffeomorphism (velocity seed 7, up to 6 mm) with an intensity change (gamma 0.8)
   for the moving scan; the tissue labels (``mni152_tissue_labels``) moved alike. Dice and
   HD95 of the moving labels warped back onto the fixed ones (CSF, grey, white matter),
   % voxels with det J <= 0 and SDlogJ of the deformable part on the fixed grid (the same
   code for both: ANTs' warp field is read with our ITK reader), time. Ours: affine (MI)
   then SVF with local NCC, levels 4, 2, 1. ANTsPy: ``registration(type_of_transform="SyN")``.

Every engine runs on one thread (torch, SimpleITK, ITK in ANTs): the test machine has two
cores shared by other jobs. Run from the repository root::

    .venv/bin/python benchmarks/bench_register.py [--repeats 3]

Ends with ``FIGURE`` lines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from napari_medattn.inference.resample import NEAREST, resample_to_spacing  # noqa: E402
from napari_medattn.io import Volume, read_volume, write_nifti  # noqa: E402
from napari_medattn.metrics.registration import folding, jacobian_determinant, sdlogj  # noqa: E402
from napari_medattn.metrics.segmentation import evaluate_pair  # noqa: E402
from napari_medattn.registration import (  # noqa: E402
    LinearTransform,
    Settings,
    bake,
    exponentiate,
    read_transform,
    register,
    warp,
)
from napari_medattn.registration.synthetic import random_velocity  # noqa: E402
from napari_medattn.registration.transforms import grid_points  # noqa: E402

SAMPLES = Path(__file__).parents[1] / "src" / "napari_medattn" / "sample_data"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
CLASSES = {1: "CSF", 2: "GM", 3: "WM"}


def nibabel_truth() -> LinearTransform:
    fixed = nib.load(SAMPLES / "nibabel_anatomical.nii.gz").affine
    moved = nib.load(SAMPLES / "nibabel_anatomical_moved.nii.gz").affine
    return LinearTransform(RAS_TO_LPS @ moved @ np.linalg.inv(fixed) @ RAS_TO_LPS, "rigid")


def t2_like(volume: Volume) -> Volume:
    """Brain intensities inverted (bright CSF, dark white matter), background kept 0."""
    data = np.asarray(volume.data, np.float32)
    inside = data > 0.1 * data.max()
    out = np.where(inside, 1.2 * data.max() - data, 0.0).astype(np.float32)
    return Volume(out, volume.affine, "MR", {**volume.meta, "name": "t2-like"})


def tre(transform, truth, fixed: Volume) -> float:
    points = grid_points(fixed.affine, fixed.spatial_shape).reshape(-1, 3)
    return float(np.linalg.norm(transform(points) - truth(points), axis=1).mean())


def sitk_image(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the volume's exact geometry (index order = array order)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(
        np.transpose(np.asarray(volume.data, np.float32), (2, 1, 0))))
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((volume.affine[:3, :3] / spacing).reshape(-1).tolist())
    image.SetOrigin(volume.affine[:3, 3].tolist())
    return image


def sitk_register(fixed: Volume, moving: Volume, kind: str) -> tuple[LinearTransform, float]:
    f, m = sitk_image(fixed), sitk_image(moving)
    start = time.perf_counter()
    base = sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3)
    initial = sitk.CenteredTransformInitializer(
        f, m, base, sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                    numberOfIterations=200)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    found = method.Execute(f, m)
    seconds = time.perf_counter() - start
    probe = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], float)
    mapped = np.array([found.TransformPoint(p.tolist()) for p in probe])
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T / 100
    return LinearTransform(matrix, "affine"), seconds


def linear_figures(repeats: int) -> list[tuple[str, float, str]]:
    fixed = read_volume(SAMPLES / "nibabel_anatomical.nii.gz")
    moved = read_volume(SAMPLES / "nibabel_anatomical_moved.nii.gz")
    truth = nibabel_truth()
    figures = []
    for pair, moving in (("t1", moved), ("t1_t2", t2_like(moved))):
        for kind in ("rigid", "affine"):
            ours_t, ours_tre, sitk_t, sitk_tre = [], [], [], []
            for _ in range(repeats):  # alternate the two engines
                result = register(fixed, moving, Settings(method=kind, metric="mi"))
                ours_t.append(result.seconds)
                ours_tre.append(tre(result.transform, truth, fixed))
                transform, seconds = sitk_register(fixed, moving, kind)
                sitk_t.append(seconds)
                sitk_tre.append(tre(transform, truth, fixed))
            ours, theirs = statistics.median(ours_t), statistics.median(sitk_t)
            print(f"{pair} {kind}: ours TRE {np.median(ours_tre):.3f} mm {ours:.2f} s; "
                  f"SimpleITK TRE {np.median(sitk_tre):.3f} mm {theirs:.2f} s")
            figures += [(f"{pair}_{kind}_tre_ours", float(np.median(ours_tre)), "mm"),
                        (f"{pair}_{kind}_tre_sitk", float(np.median(sitk_tre)), "mm"),
                        (f"{pair}_{kind}_time_ours", ours, "s"),
                        (f"{pair}_{kind}_time_sitk", theirs, "s"),
                        (f"{pair}_{kind}_time_ours_over_sitk", ours / theirs, "ratio")]
    return figures


def deformable_pair():
    mni = resample_to_spacing(read_volume(SAMPLES / "mni152_t1.nii.gz"), (2.0, 2.0, 2.0))
    labels = resample_to_spacing(read_volume(SAMPLES / "mni152_tissue_labels.nii.gz"),
                                 (2.0, 2.0, 2.0), order=NEAREST)
    velocity = random_velocity(mni.spatial_shape, 2.0, magnitude_mm=6.0, smoothness_mm=12.0,
                               seed=7)
    truth = exponentiate(velocity, mni.affine)
    moving = warp(mni, truth, mni)
    data = np.asarray(moving.data, np.float32)
    moving = Volume((data.max() * (data / data.max()).clip(0, 1) ** 0.8).astype(np.float32),
                    mni.affine, "MR", {"name": "moving"})
    fixed = Volume(np.asarray(mni.data, np.float32), mni.affine, "MR", {"name": "fixed"})
    fixed_labels = Volume(np.asarray(labels.data), mni.affine, "SEG", {"name": "labels"})
    moving_labels = warp(fixed_labels, truth, fixed)
    return fixed, moving, fixed_labels, moving_labels


def overlap(warped, fixed_labels) -> dict[str, tuple[float, float]]:
    return {CLASSES[s.label]: (s.dice, s.hd95_mm)
            for s in evaluate_pair(warped, fixed_labels, classes=CLASSES)}


def deformable_figures() -> list[tuple[str, float, str]]:
    fixed, moving, fixed_labels, moving_labels = deformable_pair()
    before = overlap(Volume(np.asarray(moving_labels.data), fixed.affine, "SEG"), fixed_labels)
    print("unregistered Dice " + ", ".join(f"{k} {v[0]:.3f}" for k, v in before.items()))
    rows = {}
    result = register(fixed, moving, Settings(method="deformable", metric="ncc"))
    det = jacobian_determinant(bake(result.field, fixed.affine, fixed.spatial_shape),
                               fixed.affine, fixed.spatial_shape)
    rows["ours"] = (overlap(warp(moving_labels, result.transform, fixed), fixed_labels),
                    det, result.seconds)
    rows["ants_syn"] = ants_syn(fixed, moving, fixed_labels, moving_labels)
    figures = []
    brain = np.asarray(fixed_labels.data) > 0
    for name, (scores, det, seconds) in rows.items():
        percent, _ = folding(det, fixed.affine)
        spread = sdlogj(det, brain)
        print(f"{name}: " + ", ".join(f"{k} Dice {d:.3f} HD95 {h:.2f} mm"
                                      for k, (d, h) in scores.items())
              + f"; folding {percent:.4f} %; SDlogJ {spread:.4f}; {seconds:.1f} s")
        for label, (dice, hd95) in scores.items():
            figures += [(f"deformable_{name}_dice_{label}", dice, "dice"),
                        (f"deformable_{name}_hd95_{label}", hd95, "mm")]
        figures += [(f"deformable_{name}_folding", percent, "percent"),
                    (f"deformable_{name}_sdlogj", spread, "sdlogj"),
                    (f"deformable_{name}_time", seconds, "s")]
    figures.append(("deformable_time_ours_over_ants_syn",
                    rows["ours"][2] / rows["ants_syn"][2], "ratio"))
    return figures


def ants_syn(fixed, moving, fixed_labels, moving_labels):
    import ants

    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for name, volume in (("fixed", fixed), ("moving", moving),
                             ("moving_labels", moving_labels)):
            paths[name] = write_nifti(Path(folder) / f"{name}.nii.gz", volume)
        f, m = ants.image_read(str(paths["fixed"])), ants.image_read(str(paths["moving"]))
        start = time.perf_counter()
        out = ants.registration(f, m, type_of_transform="SyN")
        seconds = time.perf_counter() - start
        labels = ants.apply_transforms(f, ants.image_read(str(paths["moving_labels"])),
                                       out["fwdtransforms"], interpolator="nearestNeighbor")
        warped = Volume(labels.numpy().astype(np.uint8), fixed.affine, "SEG")
        field = read_transform(out["fwdtransforms"][0])  # ANTs' warp: ITK displacement NIfTI
        det = jacobian_determinant(field, fixed.affine, fixed.spatial_shape)
    return overlap(warped, fixed_labels), det, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    figures = linear_figures(args.repeats) + deformable_figures()
    for name, value, unit in figures:
        print(f"FIGURE {name} {value:.4g} {unit}")


if __name__ == "__main__":
    main()
