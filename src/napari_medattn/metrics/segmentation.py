"""Segmentation metrics: label maps (prediction, reference) scored per class in mm.

Metrics per class (``pred`` = predicted mask P, ``ref`` = reference mask R)::

    dice            2|P∩R| / (|P| + |R|)
    iou             |P∩R| / |P∪R|
    sensitivity     |P∩R| / |R|
    precision       |P∩R| / |P|
    hd95_mm         max(95th percentile of d(P->R), 95th percentile of d(R->P))
    hd_mm           max(max d(P->R), max d(R->P))      (Hausdorff distance)
    assd_mm         mean of d(P->R) and d(R->P) pooled  (average symmetric surface distance)
    volume_*_ml     volumes in mL; volume_diff_ml = V(P) - V(R);
    volume_diff_rel (V(P) - V(R)) / V(R)

where d(P->R) are the distances from every surface voxel of P to the surface of R
(:mod:`napari_medattn.metrics.surface`); percentiles interpolate linearly (``np.percentile``
and ``torch.quantile`` defaults). For 2D inputs the ``volume_*`` fields hold areas in cm².

Empty masks (see ``docs/metrics.md``):

* **both empty** (the class is absent and correctly predicted absent): every overlap metric
  is 1, every distance 0, every volume field 0 (the BraTS convention).
* **one empty**: dice and iou are 0; the distances are ``inf`` (there is no surface to
  measure to), as in MONAI; a ratio whose denominator is 0 (sensitivity when R is empty,
  precision when P is empty, volume_diff_rel when R is empty) is ``nan``.
* means (:func:`summarize`) skip non-finite values and report per metric how many were
  skipped.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medattn.errors import DimensionError, GeometryError, MedAttnError, ReadError
from napari_medattn.metrics.surface import surface_distances

#: Score fields of :class:`SegmentationScores`, in table order.
METRICS = ("dice", "iou", "hd95_mm", "hd_mm", "assd_mm", "sensitivity", "precision",
           "volume_pred_ml", "volume_ref_ml", "volume_diff_ml", "volume_diff_rel")

#: Two grids match when every corner voxel centre lies within this distance (mm).
GEOMETRY_TOLERANCE_MM = 1e-3

#: File endings of cases in a folder; the case name is the file name without them.
CASE_SUFFIXES = (".nii.gz", ".nii", ".dcm")


@dataclasses.dataclass(frozen=True)
class SegmentationScores:
    """Scores of one class in one case (field meanings in the module docstring)."""

    case: str
    label: int
    name: str
    pred_voxels: int
    ref_voxels: int
    dice: float
    iou: float
    hd95_mm: float
    hd_mm: float
    assd_mm: float
    sensitivity: float
    precision: float
    volume_pred_ml: float
    volume_ref_ml: float
    volume_diff_ml: float
    volume_diff_rel: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MeanScores:
    """Means of the metrics over a group of :class:`SegmentationScores`.

    ``scope`` is ``"case"`` (the foreground classes of one case), ``"class"`` (one class
    over all cases) or ``"all"`` (every case and class). ``n`` counts the scores averaged;
    ``excluded[metric]`` counts those skipped because the value was ``inf`` or ``nan``.
    """

    scope: str
    case: str
    label: int | None
    name: str
    n: int
    means: dict[str, float]
    excluded: dict[str, int]


@dataclasses.dataclass
class EvaluationReport:
    """Scores of every case and class, their means, and the cases that failed."""

    scores: list[SegmentationScores]
    summary: list[MeanScores]
    #: ``(case, sentence)`` for each case that could not be evaluated.
    problems: list[tuple[str, str]]


def evaluate_pair(pred: Any, ref: Any, spacing: Sequence[float] | None = None,
                  classes: Iterable[int] | None = None,
                  class_names: Mapping[int, str] | Sequence[str] | None = None,
                  case: str = "case") -> list[SegmentationScores]:
    """Score a predicted label map against a reference, per class.

    Parameters
    ----------
    pred, ref : Volume, ndarray or torch.Tensor
        Label maps (non-negative integers; booleans and integral floats are accepted),
        2D or 3D, on the same grid.
    spacing : sequence of float, optional
        Voxel size in mm along each array axis, for arrays only (a Volume's geometry
        comes from its affine, which is used exactly, shear included). Default 1 mm.
    classes : iterable of int, optional
        Labels to score. Default: every non-zero label present in either map.
    class_names : mapping label -> name, or sequence indexed by label, optional
        Names for the table; default ``"class <label>"``.
    case : str
        Case name, carried into the scores and error messages.

    Returns
    -------
    list of SegmentationScores
        One per class, in ascending label order.

    Raises
    ------
    GeometryError
        The maps differ in shape or affine (the message names the case), or
        ``spacing`` was given with a Volume.
    DimensionError
        Not a 2D/3D label map, or ``spacing`` of the wrong length or not positive.
    """
    pred_labels, pred_affine = _label_map(pred, case, "prediction")
    ref_labels, ref_affine = _label_map(ref, case, "reference")
    if pred_labels.shape != ref_labels.shape:
        raise GeometryError(f"Case {case}: the prediction has shape {pred_labels.shape} but "
                            f"the reference {ref_labels.shape}.")
    linear = _linear_map(pred_affine, ref_affine, spacing, pred_labels.shape, case)
    pred_boxes = ndimage.find_objects(pred_labels)
    ref_boxes = ndimage.find_objects(ref_labels)
    if classes is None:
        classes = _present_labels(pred_boxes) | _present_labels(ref_boxes)
    voxel_ml = abs(float(np.linalg.det(linear))) / 10.0 ** (3 if linear.shape[0] == 3 else 2)
    scores = []
    for label in sorted({int(c) for c in classes}):
        if label < 0:
            raise DimensionError(f"Class labels must be non-negative, got {label}.")
        name = _class_name(label, class_names)
        box = _union_box(_box(pred_boxes, label), _box(ref_boxes, label), pred_labels.shape,
                         label)
        if box is None:  # absent from both maps
            scores.append(_scores(case, label, name, 0, 0, 0, voxel_ml, None))
            continue
        pred_mask = pred_labels[box] == label
        ref_mask = ref_labels[box] == label
        n_pred = int(np.count_nonzero(pred_mask))
        n_ref = int(np.count_nonzero(ref_mask))
        overlap = int(np.count_nonzero(pred_mask & ref_mask))
        distances = surface_distances(pred_mask, ref_mask, linear) if n_pred and n_ref else None
        scores.append(_scores(case, label, name, overlap, n_pred, n_ref, voxel_ml, distances))
    return scores


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike,
                     classes: Iterable[int] | None = None,
                     class_names: Mapping[int, str] | Sequence[str] | None = None
                     ) -> EvaluationReport:
    """Score every prediction in a folder against the reference of the same file name.

    Cases are ``.nii.gz``, ``.nii`` or ``.dcm`` files and DICOM series sub-folders; the
    case name is the file name without those endings. Other files (e.g. the
    ``plans.json`` nnU-Net writes beside its predictions) are ignored.

    Parameters
    ----------
    pred_dir, ref_dir : path
        Folders of predicted and reference label maps.
    classes, class_names
        As for :func:`evaluate_pair`. With ``classes=None`` every label present in any
        case is scored in every case, so a class absent from a case gets the both-empty
        convention there instead of being silently left out of its means.

    Returns
    -------
    EvaluationReport
        A case that cannot be read, has no counterpart or mismatched geometry is listed in
        ``problems`` with one sentence; the other cases are still scored.
    """
    preds, refs = _cases(pred_dir), _cases(ref_dir)
    pairs = [(name, preds.get(name), refs.get(name)) for name in sorted(preds | refs)]
    return _evaluate_cases(pairs, classes, class_names, pred_dir, ref_dir)


def evaluate_paths(pred: str | os.PathLike, ref: str | os.PathLike,
                   classes: Iterable[int] | None = None,
                   class_names: Mapping[int, str] | Sequence[str] | None = None
                   ) -> EvaluationReport:
    """Score two label-map files (one case) or two folders (:func:`evaluate_folders`).

    Parameters
    ----------
    pred, ref : path
        A predicted and a reference label map (NIfTI or DICOM; the case is named after
        the reference file), or two folders of them.
    classes, class_names
        As for :func:`evaluate_pair`.

    Returns
    -------
    EvaluationReport
        Scores, means and the cases that could not be scored.

    Raises
    ------
    ReadError
        One path is a folder and the other a file, or a path does not exist.
    """
    pred, ref = Path(pred), Path(ref)
    for path in (pred, ref):
        if not path.exists():
            raise ReadError(f"{path} does not exist.")
    if pred.is_dir() != ref.is_dir():
        raise ReadError(f"Give two files or two folders; {pred} and {ref} are one of each.")
    if pred.is_dir():
        return evaluate_folders(pred, ref, classes, class_names)
    return _evaluate_cases([(_case_name(ref), pred, ref)], classes, class_names, pred.parent,
                           ref.parent)


def summarize(scores: Sequence[SegmentationScores]) -> list[MeanScores]:
    """Means per case (over its classes), per class (over cases) and over everything.

    Parameters
    ----------
    scores : sequence of SegmentationScores
        Scores of any number of cases and classes.

    Returns
    -------
    list of MeanScores
        One per case (in order of appearance), one per label (ascending), then the
        overall mean over every (case, class) score. Non-finite values (``inf``
        distances and ``nan`` ratios of one-empty classes) are skipped and counted in
        ``excluded``; a mean over nothing finite is ``nan``.
    """
    groups: list[tuple[str, str, int | None, str, list[SegmentationScores]]] = []
    cases = list(dict.fromkeys(s.case for s in scores))
    labels = sorted({s.label for s in scores})
    for case in cases:
        groups.append(("case", case, None, "mean", [s for s in scores if s.case == case]))
    for label in labels:
        members = [s for s in scores if s.label == label]
        groups.append(("class", "all", label, members[0].name, members))
    if scores:
        groups.append(("all", "all", None, "mean", list(scores)))
    summary = []
    for scope, case, label, name, members in groups:
        means, excluded = {}, {}
        for metric in METRICS:
            values = np.array([getattr(s, metric) for s in members], dtype=float)
            finite = values[np.isfinite(values)]
            means[metric] = float(finite.mean()) if finite.size else math.nan
            excluded[metric] = int(values.size - finite.size)
        summary.append(MeanScores(scope, case, label, name, len(members), means, excluded))
    return summary


def _evaluate_cases(pairs, classes, class_names, pred_dir, ref_dir) -> EvaluationReport:
    from napari_medattn.io import read_volume  # the readers are heavy; metrics of arrays do not need them

    scores: list[SegmentationScores] = []
    problems: list[tuple[str, str]] = []
    for name, pred_path, ref_path in pairs:
        if pred_path is None:
            problems.append((name, f"Case {name}: no prediction in {pred_dir}."))
            continue
        if ref_path is None:
            problems.append((name, f"Case {name}: no reference in {ref_dir}."))
            continue
        try:
            scores += evaluate_pair(read_volume(pred_path), read_volume(ref_path),
                                    classes=classes, class_names=class_names, case=name)
        except MedAttnError as error:
            message = str(error)
            prefix = f"Case {name}: "
            problems.append((name, message if message.startswith(prefix) else prefix + message))
    if classes is None:
        scores = _fill_absent_classes(scores, class_names)
    return EvaluationReport(scores, summarize(scores), problems)


def _fill_absent_classes(scores, class_names):
    # A label found in some cases is scored in all of them: where it is absent from both
    # maps the pair needs no data to be scored (both-empty convention).
    labels = sorted({s.label for s in scores})
    by_case: dict[str, dict[int, SegmentationScores]] = {}
    for s in scores:
        by_case.setdefault(s.case, {})[s.label] = s
    filled = []
    for case, present in by_case.items():
        for label in labels:
            filled.append(present.get(label) or _scores(
                case, label, _class_name(label, class_names), 0, 0, 0, 0.0, None))
    return filled


def _scores(case: str, label: int, name: str, overlap: int, n_pred: int, n_ref: int,
            voxel_ml: float, distances: tuple[np.ndarray, np.ndarray] | None
            ) -> SegmentationScores:
    """All metrics of one class from its voxel counts and surface distances; the single
    place where the empty-mask conventions are applied."""
    if n_pred == 0 and n_ref == 0:
        dice = iou = sensitivity = precision = 1.0
        hd95 = hd = assd = 0.0
        relative = 0.0
    else:
        dice = 2.0 * overlap / (n_pred + n_ref)
        iou = overlap / (n_pred + n_ref - overlap)
        sensitivity = overlap / n_ref if n_ref else math.nan
        precision = overlap / n_pred if n_pred else math.nan
        relative = (n_pred - n_ref) / n_ref if n_ref else math.nan
        if distances is None:  # exactly one mask is empty
            hd95 = hd = assd = math.inf
        else:
            to_ref, to_pred = distances
            hd95 = max(float(np.percentile(to_ref, 95)), float(np.percentile(to_pred, 95)))
            hd = max(float(to_ref.max()), float(to_pred.max()))
            assd = float((to_ref.sum() + to_pred.sum()) / (to_ref.size + to_pred.size))
    return SegmentationScores(
        case=case, label=label, name=name, pred_voxels=n_pred, ref_voxels=n_ref,
        dice=dice, iou=iou, hd95_mm=hd95, hd_mm=hd, assd_mm=assd,
        sensitivity=sensitivity, precision=precision,
        volume_pred_ml=n_pred * voxel_ml, volume_ref_ml=n_ref * voxel_ml,
        volume_diff_ml=(n_pred - n_ref) * voxel_ml, volume_diff_rel=relative)


def _label_map(value: Any, case: str, role: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(integer label array, affine or None) of a Volume, array or tensor."""
    affine = None
    if hasattr(value, "affine") and hasattr(value, "data"):  # a Volume
        affine, value = value.affine, value.data
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    labels = np.asarray(value)
    if labels.ndim not in (2, 3):
        raise DimensionError(f"Case {case}: the {role} must be a 2D or 3D label map; it has "
                             f"{labels.ndim} dimensions.")
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    elif labels.dtype.kind == "f":
        # NIfTI label maps are often stored as floats: accept them when they hold integers.
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            raise DimensionError(f"Case {case}: the {role} holds non-integer values; a label "
                                 f"map must hold class numbers.")
        labels = labels.astype(np.int32)
    elif labels.dtype.kind not in "iu":
        raise DimensionError(f"Case {case}: the {role} has data type {labels.dtype}; a label "
                             f"map must hold integers.")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise DimensionError(f"Case {case}: the {role} holds negative labels.")
    return labels, affine


def _linear_map(pred_affine, ref_affine, spacing, shape, case) -> np.ndarray:
    """Index step -> mm matrix of the shared grid, after checking the grids agree."""
    ndim = len(shape)
    affines = [a for a in (pred_affine, ref_affine) if a is not None]
    if affines:
        if spacing is not None:
            raise GeometryError(f"Case {case}: the spacing comes from the volumes' affine; "
                                f"pass plain arrays to give it explicitly.")
        if len(affines) == 2:
            corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij"))
            corners = np.vstack([corners.reshape(ndim, -1), np.ones(2 ** ndim)])
            offset = np.abs((affines[0] - affines[1]) @ corners)[:3].max()
            if offset > GEOMETRY_TOLERANCE_MM:
                raise GeometryError(
                    f"Case {case}: the prediction and reference grids differ by up to "
                    f"{offset:.3g} mm in patient space (affines must match within "
                    f"{GEOMETRY_TOLERANCE_MM} mm); resample the prediction onto the "
                    f"reference grid.")
        return affines[-1][:3, :3]
    spacing = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=float).ravel()
    if spacing.shape != (ndim,) or not (spacing > 0).all():
        raise DimensionError(f"Case {case}: spacing must be {ndim} positive numbers (mm), got "
                             f"{spacing.tolist()}.")
    return np.diag(spacing)


def _present_labels(boxes) -> set[int]:
    return {index + 1 for index, box in enumerate(boxes) if box is not None}


def _box(boxes, label: int):
    return boxes[label - 1] if 0 < label <= len(boxes) else None


def _union_box(first, second, shape, label):
    if label == 0:  # background: find_objects does not report it
        return tuple(slice(0, n) for n in shape)
    if first is None or second is None:
        return first or second
    return tuple(slice(min(a.start, b.start), max(a.stop, b.stop))
                 for a, b in zip(first, second))


def _class_name(label: int, names) -> str:
    if names is not None:
        if isinstance(names, Mapping):
            if label in names:
                return str(names[label])
        elif label < len(names):
            return str(names[label])
    return f"class {label}"


def _case_name(path: Path) -> str:
    for suffix in CASE_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _cases(folder: str | os.PathLike) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ReadError(f"{folder} is not a folder.")
    cases = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() or path.name.lower().endswith(CASE_SUFFIXES):
            name = _case_name(path)
            if name in cases:
                raise ReadError(f"{folder} holds two cases named {name} ({cases[name].name} "
                                f"and {path.name}).")
            cases[name] = path
    return cases
