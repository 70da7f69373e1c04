"""Segmentation datasets on disk (or volumes in memory), checked up front as cases.

Two layouts are read (images NIfTI or DICOM, through :func:`napari_medattn.io.read_volume`):

* **Medical Segmentation Decathlon / nnU-Net folder**: ``dataset.json`` plus ``imagesTr/``
  and ``labelsTr/``. ``dataset.json`` declares ``"labels"`` (MSD ``{"0": "background"}`` or
  nnU-Net v2 ``{"background": 0}``) and the channels (``"channel_names"`` or MSD's
  ``"modality"``). Cases come from its ``"training"`` list when present (MSD, nnU-Net v1),
  else from the files in ``labelsTr/``. A case's image is either one file (a 4D file holds
  all channels, as in MSD) or one file per channel with nnU-Net's ``_0000``, ``_0001``, ...
  suffix (``"file_ending"``, default ``.nii.gz``).
* **CSV** with a header: ``label`` (the label map), one or more columns whose name starts
  with ``image`` (channels, in column order; a path may be a DICOM folder), optional
  ``name``. Relative paths are relative to the CSV's folder.

:func:`load_cases` reads every case and refuses the dataset with one sentence naming the
case when something is wrong: a missing or unreadable file (:class:`ReadError`), a label
map on another grid than its image or channels on different grids
(:class:`GeometryError`), label values the dataset does not declare or non-integer
labels (:class:`ReadError`), a channel count that differs from the declared one
(:class:`DimensionError`).

:func:`make_case` makes the same checks on volumes in memory (synthetic cases, see
:func:`napari_medattn.training.synthesis.synthetic_brain_cases`).

:func:`napari_medattn.training.patches.prepare_case` brings the cases to a model's grid
and :class:`~napari_medattn.training.patches.PatchDataset` serves them as random patches.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medattn.errors import DimensionError, GeometryError, MedAttnError, ReadError
from napari_medattn.io import Volume, read_volume

#: Default tolerance (mm) when comparing the affines of a case's image and label.
GRID_TOLERANCE_MM = 1e-3


@dataclasses.dataclass
class Case:
    """One training case in memory.

    Attributes
    ----------
    name : str
        Case identifier (file stem or the CSV's ``name``).
    image : Volume
        4D ``(channels, a0, a1, a2)`` float32, with the affine of its grid (LPS mm). As
        loaded by :func:`load_cases`, array axes follow napari's world axes (the
        :meth:`~napari_medattn.io.Volume.canonical` view, superior, posterior, left).
    label : Volume
        3D integer label map on the same grid, modality ``"SEG"``.
    """

    name: str
    image: Volume
    label: Volume


@dataclasses.dataclass
class SegmentationData:
    """Checked cases of a dataset with their declared classes and channels.

    Attributes
    ----------
    cases : list of Case
    labels : dict of int to str
        Declared label values and names (0 is background).
    channel_names : list of str
        One name per input channel (e.g. ``["T1", "FLAIR"]``).
    source : Path
        The folder or CSV the cases came from.
    """

    cases: list[Case]
    labels: dict[int, str]
    channel_names: list[str]
    source: Path

    def split(self, validation_fraction: float = 0.2, seed: int = 0
              ) -> tuple[list[Case], list[Case]]:
        """Shuffle the cases with ``seed`` and hold out a fraction as whole validation cases.

        Parameters
        ----------
        validation_fraction : float
            Fraction (0-1) of cases for validation; at least one case when there are two
            or more, none for a single case.
        seed : int
            Seed of the shuffle.

        Returns
        -------
        train, validation : list of Case
        """
        if not 0 <= validation_fraction < 1:
            raise DimensionError(f"The validation fraction must be in [0, 1), got "
                                 f"{validation_fraction}.")
        order = np.random.default_rng(seed).permutation(len(self.cases))
        count = len(self.cases)
        n_val = 0 if count < 2 or validation_fraction == 0 else max(
            1, int(round(validation_fraction * count)))
        validation = [self.cases[i] for i in sorted(order[:n_val])]
        train = [self.cases[i] for i in sorted(order[n_val:])]
        return train, validation


@dataclasses.dataclass(frozen=True)
class _CaseFiles:
    name: str
    images: tuple[Path, ...]
    label: Path


def load_cases(path: str | os.PathLike, *, labels: Mapping[int, str] | None = None,
               tolerance_mm: float = GRID_TOLERANCE_MM) -> SegmentationData:
    """Read and check every case of a dataset folder or CSV.

    Parameters
    ----------
    path : str or PathLike
        An MSD / nnU-Net folder (with ``dataset.json``) or a ``.csv`` file (see module
        docstring).
    labels : mapping of int to str, optional
        Declared label values and names. Required knowledge for a CSV (without it, the
        values found are taken as the classes, named ``"label <v>"``); for a folder it
        replaces ``dataset.json``'s ``"labels"``.
    tolerance_mm : float
        Largest difference (mm, per affine entry) between a case's image and label
        affines that still counts as the same grid.

    Returns
    -------
    SegmentationData

    Raises
    ------
    ReadError
        Missing ``dataset.json`` / CSV columns, a missing or unreadable file, label
        values outside the declared labels or not integers; the message names the case.
    GeometryError
        A label map or channel on another grid (shape or affine) than the case's first
        channel.
    DimensionError
        A case with another number of channels than declared (or than the first case).
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(f"The dataset {path} does not exist.")
    if path.is_dir():
        files, declared, channel_names = _decathlon_files(path)
    elif path.suffix.lower() == ".csv":
        files, declared, channel_names = _csv_files(path), None, None
    else:
        raise ReadError(f"{path.name} is neither a dataset folder nor a .csv file.")
    if labels is not None:
        declared = {int(k): str(v) for k, v in labels.items()}
    if not files:
        raise ReadError(f"The dataset {path} lists no cases.")
    cases = [_read_case(f, tolerance_mm) for f in files]
    channels = cases[0].image.data.shape[0] if channel_names is None else len(channel_names)
    for case in cases:
        if case.image.data.shape[0] != channels:
            raise DimensionError(f"Case {case.name} has {case.image.data.shape[0]} channel(s); "
                                 f"the dataset has {channels}.")
    found = sorted(set().union(*(np.unique(c.label.data).tolist() for c in cases)))
    if declared is None:
        declared = {int(v): ("background" if v == 0 else f"label {v}") for v in found}
    for case in cases:
        unknown = sorted(set(np.unique(case.label.data).tolist()) - set(declared))
        if unknown:
            raise ReadError(f"Case {case.name} has label value(s) {unknown} that the dataset "
                            f"does not declare ({sorted(declared)}).")
    if channel_names is None:
        channel_names = [f"channel {i}" for i in range(channels)]
    return SegmentationData(cases, dict(sorted(declared.items())), list(channel_names), path)


def _decathlon_files(root: Path) -> tuple[list[_CaseFiles], dict[int, str], list[str]]:
    """Case files, declared labels and channel names of an MSD / nnU-Net folder."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise ReadError(f"{root} has no dataset.json (Medical Segmentation Decathlon / "
                        f"nnU-Net layout).")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReadError(f"{meta_path} is not readable JSON ({error}).") from None
    labels = _declared_labels(meta, meta_path)
    channel_map = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channel_map, Mapping) or not channel_map:
        raise ReadError(f"{meta_path} declares no channels ('channel_names' or 'modality').")
    try:
        channel_names = [str(channel_map[k]) for k in sorted(channel_map, key=int)]
    except ValueError:
        raise ReadError(f"{meta_path}: channel keys must be numbers, got "
                        f"{list(channel_map)}.") from None
    ending = str(meta.get("file_ending", ".nii.gz"))
    images, label_dir = root / "imagesTr", root / "labelsTr"
    files = []
    if isinstance(meta.get("training"), list) and meta["training"]:
        for entry in meta["training"]:
            try:
                image, label = root / entry["image"], root / entry["label"]
            except (TypeError, KeyError):
                raise ReadError(f"{meta_path}: each 'training' entry needs 'image' and "
                                f"'label', got {entry!r}.") from None
            name = _stem(label)
            if image.exists():
                files.append(_CaseFiles(name, (image,), label))
            else:
                # nnU-Net v1 lists the case without its per-channel _0000 suffixes.
                files.append(_CaseFiles(name, _channel_files(images, name, ending,
                                                             len(channel_names)), label))
    else:
        if not label_dir.is_dir():
            raise ReadError(f"{root} has no labelsTr folder.")
        for label in sorted(label_dir.iterdir()):
            # MSD archives carry macOS '._' resource files beside the images.
            if label.name.startswith(("._", ".")) or not label.name.endswith(ending):
                continue
            name = label.name[: -len(ending)]
            files.append(_CaseFiles(name, _channel_files(images, name, ending,
                                                         len(channel_names)), label))
    return files, labels, channel_names


def _declared_labels(meta: Mapping[str, Any], where: Path) -> dict[int, str]:
    labels = meta.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise ReadError(f"{where} declares no 'labels'.")
    try:
        if all(str(k).lstrip("-").isdigit() for k in labels):
            return {int(k): str(v) for k, v in labels.items()}  # MSD: {"1": "tumour"}
        if all(isinstance(v, int) for v in labels.values()):
            return {int(v): str(k) for k, v in labels.items()}  # nnU-Net v2: {"tumour": 1}
    except (TypeError, ValueError):
        pass
    raise ReadError(f"{where}: 'labels' must map values to names (or names to single "
                    f"values); region-based labels are not supported.")


def _channel_files(folder: Path, name: str, ending: str, channels: int) -> tuple[Path, ...]:
    return tuple(folder / f"{name}_{c:04d}{ending}" for c in range(channels))


def _csv_files(path: Path) -> list[_CaseFiles]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
            columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ReadError(f"{path.name} is not a readable CSV file ({error}).") from None
    image_columns = [c for c in columns if c.lower().startswith("image")]
    if "label" not in columns or not image_columns:
        raise ReadError(f"{path.name} needs a 'label' column and at least one 'image' column; "
                        f"it has {columns}.")
    files = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row["label"] or not all(row[c] for c in image_columns):
            raise ReadError(f"{path.name} line {number} has an empty image or label path.")
        images = tuple(_resolve(path.parent, row[c]) for c in image_columns)
        name = row.get("name") or _stem(images[0])
        files.append(_CaseFiles(name, images, _resolve(path.parent, row["label"])))
    return files


def _resolve(base: Path, text: str) -> Path:
    candidate = Path(text).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read(path: Path, case: str) -> Volume:
    if not path.exists():
        raise ReadError(f"Case {case}: {path} does not exist.")
    try:
        # The canonical view (z, y, x LPS, zero-copy) puts an image stored slice-first
        # (DICOM) and its label map stored i, j, k (NIfTI) on comparable arrays.
        return read_volume(path).canonical()
    except MedAttnError as error:
        raise type(error)(f"Case {case}: {error}") from None


def _same_grid(a: Volume, b: Volume, tolerance_mm: float) -> bool:
    return (a.spatial_shape == b.spatial_shape
            and np.allclose(a.affine, b.affine, rtol=0, atol=tolerance_mm))


def _read_case(files: _CaseFiles, tolerance_mm: float) -> Case:
    channels = [_read(p, files.name) for p in files.images]
    return make_case(files.name, channels, _read(files.label, files.name),
                     tolerance_mm=tolerance_mm)


def make_case(name: str, channels: Sequence[Volume], label: Volume, *,
              tolerance_mm: float = GRID_TOLERANCE_MM) -> Case:
    """Check and assemble one case from volumes in memory (e.g. synthetic ones).

    The checks :func:`load_cases` makes on every case: channels and label on one grid,
    the label one 3D volume of non-negative integers.

    Parameters
    ----------
    name : str
        Case identifier, used in error messages.
    channels : sequence of Volume
        3D volumes (or 4D, frames being channels) on one grid; the first sets the grid.
    label : Volume
        3D label map on that grid.
    tolerance_mm : float
        Largest affine difference (mm, per entry) that still counts as the same grid.

    Returns
    -------
    Case
        float32 channels stacked on the first axis, labels uint8 (int32 above 255).

    Raises
    ------
    GeometryError, DimensionError, ReadError
        As for :func:`load_cases`; the message names the case.
    """
    reference = channels[0]
    for volume in channels[1:]:
        if not _same_grid(volume, reference, tolerance_mm):
            raise GeometryError(f"Case {name}: channel {volume.name} (shape "
                                f"{volume.spatial_shape}) is not on the grid of "
                                f"{reference.name} (shape {reference.spatial_shape}).")
    if label.data.ndim != 3:
        raise DimensionError(f"Case {name}: the label map {label.name} has "
                             f"{label.data.shape[0]} frames; it must be one 3D volume.")
    if not _same_grid(label, reference, tolerance_mm):
        worst = float(np.max(np.abs(label.affine - reference.affine)))
        raise GeometryError(
            f"Case {name}: the label map (shape {label.spatial_shape}) is not on the "
            f"image grid (shape {reference.spatial_shape}; affines differ by up to "
            f"{worst:.3g} mm).")
    values = np.asarray(label.data)
    if not np.issubdtype(values.dtype, np.integer):
        rounded = np.rint(values)
        if not np.array_equal(rounded, values):
            raise ReadError(f"Case {name}: the label map {label.name} holds non-integer "
                            f"values.")
        values = rounded
    if values.min() < 0:
        raise ReadError(f"Case {name}: the label map holds negative values.")
    dtype = np.uint8 if values.max() < 256 else np.int32
    stacked = np.stack([np.asarray(c, dtype=np.float32)
                        for v in channels for c in (v.data[None] if v.data.ndim == 3 else v.data)])
    image = Volume(stacked, reference.affine.copy(), reference.modality,
                   {"name": name, "source": reference.meta.get("source"), "frame_axis": "channel",
                    "units": reference.meta.get("units")})
    label_volume = Volume(values.astype(dtype), reference.affine.copy(), "SEG",
                          {"name": f"{name} labels", "source": label.meta.get("source")})
    return Case(name, image, label_volume)
