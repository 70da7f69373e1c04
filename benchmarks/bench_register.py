"""Registration figures: ours against SimpleITK (rigid/affine) and the deformable peers.

1. **Rigid and affine on the nibabel pair** (``anatomical.nii`` and nibabel's rigidly moved
   copy, Euler angles 0.1, 0.2, 0.3 rad and translation 3, 4, 5 mm) and on a
   cross-contrast pair (a T2-like rendering of the moved copy: brain intensities inverted,
   same known motion). TRE = mean distance over every fixed voxel between the found and the
   true transform (mm); time = wall time of the call. Ours: Mattes MI, levels 4, 2, 1,
   L-BFGS. SimpleITK: ImageRegistrationMethod, Mattes MI (32 bins, all voxels), shrink
   4, 2, 1 with smoothing 2, 1, 0 voxels, regular-step gradient descent, centred
   geometric initialisation, Euler3D (rigid) or Affine. Medians over ``--repeats``, the
   engines alternating; wall time and, for loaded machines, CPU time of the process
   (``*_cpu_ours_over_sitk``). The first call of each engine in the process (imports,
   allocator warm-up, and for ours the compiled kernels loaded from numba's disk cache)
   is timed apart (``linear_first_call_*``) and left out of the medians.
2. **Deformable on a 2 mm MNI152 pair**: the MNI152 T1 at 2 mm, moved by a held-out
   smooth diffeomorphism (velocity seed 7, up to 6 mm) with an intensity change (gamma 0.8)
   for the moving scan; the tissue labels (``mni152_tissue_labels``) moved alike. Dice and
   HD95 of the moving labels warped back onto the fixed ones (CSF, grey, white matter),
   % voxels with det J <= 0 and SDlogJ of the deformable part on the fixed grid (the same
   code for every engine: each peer's field is read as a displacement field), time.
   Ours: affine (MI) then SVF with local NCC, levels 4, 2, 1. Peers, each behind
   ``--peers`` (comma-separated; a peer that fails is reported with its error and skipped):

   * ``syn``: ANTsPy ``registration(type_of_transform="SyN")``;
   * ``synS``: ANTsPy ``antsRegistrationSyN[s]`` (slow: not in the default set);
   * ``elastix``: itk-elastix, elastix's default ``bspline`` parameter map;
   * ``dipy``: dipy ``SymmetricDiffeomorphicRegistration`` with ``CCMetric(3)``, defaults;
   * ``fireants``: FireANTs ``GreedyRegistration`` on CPU with its README's brain settings
     (scales 4, 2, 1; iterations 200, 100, 50; CC kernel 5; Adam, step 0.5).

   Labels of every peer but ANTs are warped by our warp through the peer's field (nearest
   neighbour), ANTs' by ``apply_transforms`` (nearest neighbour).

Peers install with pip's ``bench`` extra, but FireANTs, whose dependency pins would
replace torch and SimpleITK: ``pip install --no-deps fireants`` (its licence allows
calling it; this script only calls it).

``--threads N`` (default 1) gives every engine N threads: torch (ours, FireANTs),
SimpleITK, ITK inside ANTs and elastix (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``), OpenMP
(dipy). Run from the repository root::

    .venv/bin/python benchmarks/bench_register.py [--repeats 3] [--threads 1]
        [--peers syn,elastix,dipy,fireants] [--skip-linear] [--skip-deformable]

Ends with ``FIGURE`` lines (names carry the thread count, e.g. ``..._t1``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _threads_argument() -> str:
    """The thread count, read before the imports below (ITK and OpenMP read their
    environment variables when they load)."""
    for index, arg in enumerate(sys.argv):
        if arg == "--threads" and index + 1 < len(sys.argv):
            return sys.argv[index + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


for _name in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS"):
    os.environ[_name] = _threads_argument()

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from napari_medattn.inference.resample import NEAREST, resample_to_spacing  # noqa: E402
from napari_medattn.io import Volume, read_volume, write_nifti  # noqa: E402
from napari_medattn.metrics.registration import folding, jacobian_determinant, sdlogj  # noqa: E402
from napari_medattn.metrics.segmentation import evaluate_pair  # noqa: E402
from napari_medattn.registration import (  # noqa: E402
    DisplacementField,
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


def sitk_register(fixed: Volume, moving: Volume, kind: str
                  ) -> tuple[LinearTransform, float, float]:
    """SimpleITK's registration: the transform, wall seconds and CPU seconds."""
    f, m = sitk_image(fixed), sitk_image(moving)
    start, cpu = time.perf_counter(), time.process_time()
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
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    probe = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], float)
    mapped = np.array([found.TransformPoint(p.tolist()) for p in probe])
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T / 100
    return LinearTransform(matrix, "affine"), seconds, cpu


def ours_register(fixed: Volume, moving: Volume, kind: str
                  ) -> tuple[object, float, float]:
    """Our registration (Mattes MI, default levels): the transform, wall seconds (the
    call's own figure) and CPU seconds."""
    cpu = time.process_time()
    result = register(fixed, moving, Settings(method=kind, metric="mi"))
    return result.transform, result.seconds, time.process_time() - cpu


def linear_figures(repeats: int) -> list[tuple[str, float, str]]:
    fixed = read_volume(SAMPLES / "nibabel_anatomical.nii.gz")
    moved = read_volume(SAMPLES / "nibabel_anatomical_moved.nii.gz")
    truth = nibabel_truth()
    # The first call of each engine in the process pays for imports, allocator warm-up
    # and (ours) loading the compiled kernels from numba's disk cache: reported apart,
    # not in the medians.
    figures = [(f"linear_first_call_{name}", engine(fixed, moved, "rigid")[1], "s")
               for name, engine in (("ours", ours_register), ("sitk", sitk_register))]
    for pair, moving in (("t1", moved), ("t1_t2", t2_like(moved))):
        for kind in ("rigid", "affine"):
            runs = {"ours": [], "sitk": []}
            for _ in range(repeats):  # alternate the two engines
                for name, engine in (("ours", ours_register), ("sitk", sitk_register)):
                    transform, seconds, cpu = engine(fixed, moving, kind)
                    runs[name].append((tre(transform, truth, fixed), seconds, cpu))
            medians = {name: np.median(np.asarray(rows), axis=0) for name, rows in runs.items()}
            (ours_tre, ours, ours_cpu), (sitk_tre, theirs, sitk_cpu) = medians.values()
            print(f"{pair} {kind}: ours TRE {ours_tre:.3f} mm {ours:.3f} s (CPU "
                  f"{ours_cpu:.3f} s); SimpleITK TRE {sitk_tre:.3f} mm {theirs:.3f} s (CPU "
                  f"{sitk_cpu:.3f} s)")
            figures += [(f"{pair}_{kind}_tre_ours", ours_tre, "mm"),
                        (f"{pair}_{kind}_tre_sitk", sitk_tre, "mm"),
                        (f"{pair}_{kind}_time_ours", ours, "s"),
                        (f"{pair}_{kind}_time_sitk", theirs, "s"),
                        (f"{pair}_{kind}_time_ours_over_sitk", ours / theirs, "ratio"),
                        (f"{pair}_{kind}_cpu_ours_over_sitk", ours_cpu / sitk_cpu, "ratio")]
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


def deformable_figures(peers: list[str]) -> list[tuple[str, float, str]]:
    fixed, moving, fixed_labels, moving_labels = deformable_pair()
    before = overlap(Volume(np.asarray(moving_labels.data), fixed.affine, "SEG"), fixed_labels)
    print("unregistered Dice " + ", ".join(f"{k} {v[0]:.3f}" for k, v in before.items()))
    rows = {}
    result = register(fixed, moving, Settings(method="deformable", metric="ncc"))
    det = jacobian_determinant(bake(result.field, fixed.affine, fixed.spatial_shape),
                               fixed.affine, fixed.spatial_shape)
    rows["ours"] = (overlap(warp(moving_labels, result.transform, fixed), fixed_labels),
                    det, result.seconds)
    rows.update(peer_rows(peers, fixed, moving, fixed_labels, moving_labels))
    figures = row_figures(rows, "deformable", fixed_labels)
    for name, (_, _, seconds) in rows.items():
        if name != "ours":
            figures.append((f"deformable_time_ours_over_{name}", rows["ours"][2] / seconds,
                            "ratio"))
    return figures


def peer_rows(peers: list[str], fixed: Volume, moving: Volume, fixed_labels: Volume,
              moving_labels: Volume) -> dict[str, tuple[dict, np.ndarray, float]]:
    """``{peer: (overlap scores, det J on the fixed grid, seconds)}``; a peer that fails
    is reported and left out."""
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: write_nifti(Path(folder) / f"{name}.nii.gz", volume)
                 for name, volume in (("fixed", fixed), ("moving", moving),
                                      ("moving_labels", moving_labels))}
        for peer in peers:
            try:
                field, seconds, warped = PEERS[peer](paths, Path(folder))
            except Exception as error:  # a missing or broken peer must not stop the rest
                traceback.print_exc()
                print(f"{peer}: FAILED ({type(error).__name__}: {error})")
                continue
            if warped is None:
                warped = warp(moving_labels, field, fixed)
            det = jacobian_determinant(field, fixed.affine, fixed.spatial_shape)
            rows[peer] = (overlap(warped, fixed_labels), det, seconds)
    return rows


def ants_syn(fixed: Volume, moving: Volume, fixed_labels: Volume, moving_labels: Volume
             ) -> tuple[dict, np.ndarray, float]:
    """ANTsPy ``SyN``'s row: (overlap scores, det J, seconds)."""
    return peer_rows(["syn"], fixed, moving, fixed_labels, moving_labels)["syn"]


def row_figures(rows: dict, prefix: str, fixed_labels: Volume) -> list[tuple[str, float, str]]:
    """Print each row (Dice and HD95 per class, folding, SDlogJ inside the brain, time)
    and return its ``FIGURE`` triples named ``{prefix}_{row}_...``."""
    figures = []
    brain = np.asarray(fixed_labels.data) > 0
    for name, (scores, det, seconds) in rows.items():
        percent, _ = folding(det, fixed_labels.affine)
        spread = sdlogj(det, brain)
        print(f"{prefix} {name}: " + ", ".join(f"{k} Dice {d:.3f} HD95 {h:.2f} mm"
                                               for k, (d, h) in scores.items())
              + f"; folding {percent:.4f} %; SDlogJ {spread:.4f}; {seconds:.1f} s")
        for label, (dice, hd95) in scores.items():
            figures += [(f"{prefix}_{name}_dice_{label}", dice, "dice"),
                        (f"{prefix}_{name}_hd95_{label}", hd95, "mm")]
        figures += [(f"{prefix}_{name}_folding", percent, "percent"),
                    (f"{prefix}_{name}_sdlogj", spread, "sdlogj"),
                    (f"{prefix}_{name}_time", seconds, "s")]
    return figures


def ants_peer(kind: str):
    """ANTsPy ``registration(type_of_transform=kind)``."""
    def run(paths, folder):
        import ants

        f, m = ants.image_read(str(paths["fixed"])), ants.image_read(str(paths["moving"]))
        start = time.perf_counter()
        out = ants.registration(f, m, type_of_transform=kind)
        seconds = time.perf_counter() - start
        labels = ants.apply_transforms(f, ants.image_read(str(paths["moving_labels"])),
                                       out["fwdtransforms"], interpolator="nearestNeighbor")
        fixed = read_volume(paths["fixed"])
        warped = Volume(labels.numpy().astype(np.uint8), fixed.affine, "SEG")
        # fwdtransforms = [warp, affine]: the warp (an ITK displacement NIfTI) is the
        # deformable part.
        return read_transform(out["fwdtransforms"][0]), seconds, warped
    return run


def elastix_peer(paths, folder):
    import itk

    fixed = itk.imread(str(paths["fixed"]), itk.F)
    moving = itk.imread(str(paths["moving"]), itk.F)
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("bspline"))
    start = time.perf_counter()
    _, found = itk.elastix_registration_method(
        fixed, moving, parameter_object=parameters, log_to_console=False,
        number_of_threads=int(os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"]))
    seconds = time.perf_counter() - start
    # transformix writes its deformationField.nii into the output folder (the working
    # directory unless told).
    field = itk.transformix_deformation_field(moving, found, output_directory=str(folder))
    itk.imwrite(field, str(folder / "elastix_field.nii.gz"))
    return read_transform(folder / "elastix_field.nii.gz"), seconds, None


def dipy_peer(paths, folder):
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    fixed, moving = read_volume(paths["fixed"]), read_volume(paths["moving"])
    start = time.perf_counter()
    mapping = SymmetricDiffeomorphicRegistration(CCMetric(3)).optimize(
        np.asarray(fixed.data, np.float64), np.asarray(moving.data, np.float64),
        static_grid2world=fixed.affine, moving_grid2world=moving.affine)
    seconds = time.perf_counter() - start
    # The forward field maps each fixed point x (world = our LPS mm, from the affines
    # given) to x + d(x) in the moving scan.
    forward = np.moveaxis(np.asarray(mapping.get_forward_field(), np.float32), -1, 0)
    return DisplacementField(forward, fixed.affine), seconds, None


def fireants_peer(paths, folder):
    from fireants.io import BatchedImages, Image
    from fireants.registration.greedy import GreedyRegistration

    fixed = BatchedImages([Image.load_file(str(paths["fixed"]), device="cpu")])
    moving = BatchedImages([Image.load_file(str(paths["moving"]), device="cpu")])
    start = time.perf_counter()
    method = GreedyRegistration(scales=[4, 2, 1], iterations=[200, 100, 50],
                                fixed_images=fixed, moving_images=moving, cc_kernel_size=5,
                                deformation_type="compositive", smooth_grad_sigma=1,
                                optimizer="adam", optimizer_lr=0.5)
    method.optimize()
    seconds = time.perf_counter() - start
    method.save_as_ants_transforms(str(folder / "fireants_field.nii.gz"))
    return read_transform(folder / "fireants_field.nii.gz"), seconds, None


PEERS = {"syn": ants_peer("SyN"), "synS": ants_peer("antsRegistrationSyN[s]"),
         "elastix": elastix_peer, "dipy": dipy_peer, "fireants": fireants_peer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of every engine (read before the imports)")
    parser.add_argument("--peers", default="syn,elastix,dipy,fireants",
                        help=f"deformable peers, comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--skip-linear", action="store_true")
    parser.add_argument("--skip-deformable", action="store_true")
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    figures = [] if args.skip_linear else linear_figures(args.repeats)
    if not args.skip_deformable:
        figures += deformable_figures(peers)
    for name, value, unit in figures:
        print(f"FIGURE {name}_t{args.threads} {value:.4g} {unit}")


if __name__ == "__main__":
    main()
