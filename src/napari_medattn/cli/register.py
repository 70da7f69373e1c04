"""``medattn register`` and ``medattn warp``: align two scans, apply saved transforms.

``register FIXED MOVING --out DIR`` writes, all or none: the moving scan on the fixed grid
(``warped.nii.gz``), the transform (``transform.tfm`` for linear results,
``transform.nii.gz``, a displacement field on the fixed grid, for deformable ones; both
map fixed mm to moving mm and SimpleITK, ANTs and 3D Slicer read them), the det J map
(``detj.nii.gz``), the QA figures (``qa.json``), warped labels with ``--labels``, and
``provenance.json``. ``warp INPUT --transform FILE... --like FIXED --out FILE`` applies
saved transforms (ours or ITK's/ANTs'), to fixed points in the order given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from napari_medattn.cli.common import ProgressBar, add_device
from napari_medattn.errors import GeometryError, WriteError

METHODS = ("landmarks", "rigid", "similarity", "affine", "deformable", "learned",
           "learned-refine")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "register", help="align a moving scan to a fixed scan (writes transform, warped "
                         "scan, det J and QA)",
        description="Register MOVING to FIXED in patient space. Transforms map fixed mm "
                    "to moving mm (ITK's convention).")
    parser.add_argument("fixed", metavar="FIXED", help="fixed scan (NIfTI or DICOM)")
    parser.add_argument("moving", metavar="MOVING", help="moving scan")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--method", choices=METHODS, default="rigid",
                        help="landmarks only, an intensity-based method, or a registration "
                             "network (learned; learned-refine adds classical iterations "
                             "started from its field) (default: rigid)")
    parser.add_argument("--model", metavar="NAME|PATH",
                        help="registration model of the learned methods, a name from "
                             "`medattn models` or a model folder (default: the "
                             "TransMorph-style transmorph-brain-2mm)")
    parser.add_argument("--refine-iterations", type=int, default=20, metavar="N",
                        help="classical iterations of learned-refine at full resolution "
                             "(twice as many at half resolution first) (default: 20)")
    parser.add_argument("--metric", choices=("auto", "mse", "ncc", "mi"), default="auto",
                        help="auto: by the scans' modalities and MR weightings, as the "
                             "Register widget (same contrast: MSE linear, local NCC "
                             "deformable; across contrasts: Mattes MI)")
    parser.add_argument("--levels", default=None,
                        help="pyramid shrink factors, coarse to fine (default by the "
                             "modality pair: 4,2,1; 4,2 with PET)")
    parser.add_argument("--iterations", type=int, default=20,
                        help="L-BFGS iterations per level of the linear stage")
    parser.add_argument("--weight", type=float, default=2.0,
                        help="regularisation weight of the deformable stage")
    parser.add_argument("--smoothing-mm", type=float, default=None,
                        help="Gaussian sigma of the velocity field (mm; default by the "
                             "modality pair: 4, or 8 with PET)")
    parser.add_argument("--landmarks", nargs=2, metavar=("FIXED_CSV", "MOVING_CSV"),
                        help="paired points (x, y, z LPS mm per row): the fit for "
                             "--method landmarks, the start of the others")
    parser.add_argument("--fit", choices=("rigid", "similarity", "affine"), default="rigid",
                        help="landmark fit (default rigid)")
    parser.add_argument("--labels", nargs="+", metavar="LABELS",
                        help="MOVING_LABELS [FIXED_LABELS]: warp the moving labels; with "
                             "fixed labels, Dice and HD95 go into qa.json")
    add_device(parser)
    parser.set_defaults(func=run_register)

    warp = subparsers.add_parser(
        "warp", help="apply saved transforms to a scan or label map",
        description="Resample INPUT onto the grid of --like through transform files "
                    "(ITK .tfm/.txt/.mat or displacement-field NIfTI), applied to fixed "
                    "points in the order given.")
    warp.add_argument("input", metavar="INPUT", help="scan or label map in moving space")
    warp.add_argument("--transform", nargs="+", required=True, metavar="FILE")
    warp.add_argument("--like", required=True, metavar="FIXED", help="scan giving the grid")
    warp.add_argument("--out", required=True, metavar="FILE", help="output NIfTI file")
    warp.add_argument("--labels", action="store_true",
                      help="nearest-neighbour warping for label maps (default when the "
                           "input is a label NIfTI)")
    warp.set_defaults(func=run_warp)


def _settings(args: argparse.Namespace, device: str, fixed, moving):
    """The engine settings: the modality pair's defaults (the one table the widget uses
    too, :func:`~napari_medattn.registration.defaults.defaults_for`), then the options."""
    from napari_medattn.registration.defaults import (
        contrast_of,
        defaults_for,
        deformable_iterations_for,
    )

    base = defaults_for(contrast_of(fixed), contrast_of(moving), args.method)
    levels = base.levels
    if args.levels is not None:
        try:
            levels = tuple(int(f) for f in args.levels.split(","))
        except ValueError:
            raise GeometryError(f"--levels must be comma-separated integers, got "
                                f"{args.levels!r}.") from None
    return dataclasses.replace(
        base, metric=base.metric if args.metric == "auto" else args.metric, levels=levels,
        iterations=args.iterations, deformable_iterations=deformable_iterations_for(levels),
        weight=args.weight, device=device,
        smoothing_mm=base.smoothing_mm if args.smoothing_mm is None else args.smoothing_mm)


def run_register(args: argparse.Namespace) -> int:
    from napari_medattn.inference.devices import resolve_device
    from napari_medattn.io import read_volume
    from napari_medattn.io.provenance import Provenance
    from napari_medattn.registration import fit_landmarks, register

    fixed, moving = read_volume(args.fixed), read_volume(args.moving)
    labels = [read_volume(p, modality="SEG") for p in (args.labels or [])]
    if len(labels) > 2:
        raise GeometryError("--labels takes the moving label map and optionally the fixed "
                            "one.")
    points = None
    if args.landmarks:
        from napari_medattn.registration.landmarks import read_landmarks_csv

        points = tuple(read_landmarks_csv(p) for p in args.landmarks)
    elif args.method == "landmarks":
        raise GeometryError("--method landmarks needs --landmarks FIXED.csv MOVING.csv.")
    choice = resolve_device(args.device)
    record = Provenance("register", {k: v for k, v in vars(args).items() if k != "func"})
    record.add_input(args.fixed, fixed)
    record.add_input(args.moving, moving)
    record.device = str(choice.device)
    initial = fit_landmarks(*points, args.fit) if points is not None else None
    if args.method == "landmarks":
        transform, similarity = initial, None
    elif args.method.startswith("learned"):
        from napari_medattn.registration.learned import DEFAULT_MODEL, register_learned

        if initial is not None:
            raise GeometryError("--landmarks cannot start a learned registration (it makes "
                                "its own affine pre-alignment); drop --landmarks or use "
                                "--method deformable.")
        refine = args.refine_iterations if args.method == "learned-refine" else 0
        with ProgressBar("register", unit="step") as bar:
            result = register_learned(fixed, moving, model=args.model or DEFAULT_MODEL,
                                      refine_iterations=refine, device=str(choice.device),
                                      metric=None if args.metric == "auto" else args.metric,
                                      progress=bar.update)
        transform, similarity = result.transform, (result.loss_before, result.loss_after)
        record.details["model"] = args.model or DEFAULT_MODEL
        record.details["seconds"] = result.seconds
    else:
        settings = _settings(args, str(choice.device), fixed, moving)
        with ProgressBar("register", unit="step") as bar:
            result = register(fixed, moving, settings, initial=initial, progress=bar.update)
        transform, similarity = result.transform, (result.loss_before, result.loss_after)
        record.details["metric"] = settings.metric
        record.details["seconds"] = result.seconds
    return _write_results(Path(args.out), fixed, moving, labels, transform, points,
                          similarity, record)


def _write_results(out: Path, fixed, moving, labels, transform, points, similarity,
                   record) -> int:
    from napari_medattn.io import write_nifti
    from napari_medattn.io.atomic import atomic_files
    from napari_medattn.io.nifti import volume_like
    from napari_medattn.metrics.registration import registration_quality
    from napari_medattn.registration import LinearTransform, bake, warp, write_transform
    from napari_medattn.registration.transforms import LINEAR_KINDS

    linear = isinstance(transform, LinearTransform) and transform.kind in LINEAR_KINDS
    if not linear:
        transform = bake(transform, fixed.affine, fixed.spatial_shape)
    quality, det_j = registration_quality(
        transform, fixed, moving_labels=labels[0] if labels else None,
        fixed_labels=labels[1] if len(labels) > 1 else None, landmarks=points,
        similarity=similarity)
    outputs = {"warped": "warped.nii.gz",
               "transform": "transform.tfm" if linear else "transform.nii.gz",
               "detj": "detj.nii.gz", "qa": "qa.json"}
    if labels:
        outputs["labels"] = "labels_warped.nii.gz"
    names = [*outputs.values(), "provenance.json"]
    protected = {Path(p.meta.get("source", "")).resolve() for p in (fixed, moving, *labels)}
    if any((out / name).resolve() in protected for name in names):
        raise WriteError(f"An output in {out} would overwrite an input; choose another "
                         f"folder.")
    with atomic_files(out, names) as paths:
        write_nifti(paths["warped.nii.gz"], warp(moving, transform, fixed))
        write_transform(paths[outputs["transform"]], transform)
        write_nifti(paths["detj.nii.gz"], volume_like(fixed, det_j.astype("float32"),
                                                      modality="OT", name="det J"))
        if labels:
            write_nifti(paths["labels_warped.nii.gz"], warp(labels[0], transform, fixed,
                                                            labels=True))
        paths["qa.json"].write_text(json.dumps(quality.as_dict(), indent=2))
        record.outputs.update(outputs)
        record.details["qa"] = quality.as_dict()
        record.write(paths["provenance.json"])
    print(f"{record.inputs[1]['path']} -> {out / outputs['warped']}")
    print(f"  transform: {out / outputs['transform']}; folding {quality.folding_percent:.3f} %"
          + (f"; TRE {quality.tre_mean_mm:.2f} mm" if quality.tre_mean_mm is not None else "")
          + "".join(f"; Dice {name} {value:.3f}" for name, value in quality.dice.items()))
    return 0


def run_warp(args: argparse.Namespace) -> int:
    from napari_medattn.io import read_volume, write_nifti
    from napari_medattn.registration import compose, read_transform, warp
    from napari_medattn.registration.itk_files import check_fits

    like = read_volume(args.like)
    volume = read_volume(args.input, modality="SEG" if args.labels else None)
    transform = compose(*(read_transform(p) for p in args.transform))
    check_fits(transform, like.affine, like.spatial_shape)
    out = Path(args.out)
    if out.resolve() in {Path(args.input).resolve(), Path(args.like).resolve()}:
        raise WriteError(f"{out} is an input; choose another output file.")
    written = write_nifti(out, warp(volume, transform, like,
                                    labels=True if args.labels else None))
    print(f"{args.input} -> {written}")
    return 0
