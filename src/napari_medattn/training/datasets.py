"""Segmentation datasets on disk, checked up front, served as random patches or whole cases.

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

:func:`prepare_case` brings a case to a model's grid and intensity scale exactly as the
inference pipeline does (:func:`napari_medattn.inference.preprocess.reorient`, the one
resampler, :func:`~napari_medattn.inference.preprocess.normalize_intensity`), so training
and inference see the same inputs. :class:`PatchDataset` serves random patches with
nnU-Net's foreground oversampling, reproducible from a seed; augmentation is applied to
whole batches afterwards (:mod:`napari_medattn.training.augment`).
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
import torch
from torch.utils.data import Dataset

from napari_medattn.errors import DimensionError, GeometryError, MedAttnError, ReadError
from napari_medattn.inference.preprocess import normalize_intensity, reorient
from napari_medattn.inference.resample import LINEAR, NEAREST, resample_to_grid, spacing_grid
from napari_medattn.io import Volume, read_volume

#: Default tolerance (mm) when comparing the affines of a case's image and label.
GRID_TOLERANCE_MM = 1e-3
#: nnU-Net forces a foreground voxel into this fraction of patches.
FOREGROUND_FRACTION = 0.33
#: At most this many voxel positions per class and case are kept for oversampling.
FOREGROUND_SAMPLES = 10_000


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


def prepare_case(case: Case, *, orientation: str | None = None,
                 spacing: Sequence[float] | None = None,
                 normalization: Mapping[str, Any] | None = None) -> Case:
    """Bring a case to a model's orientation, voxel size and intensity scale.

    The same steps, in the same order, as :func:`napari_medattn.inference.pipeline.segment`:
    reorient (a view), resample (image linear, labels nearest, with the one resampler),
    then normalise each channel.

    Parameters
    ----------
    case : Case
    orientation : str, optional
        Three LPS-convention letters, e.g. ``"RAS"`` (a model card's ``orientation``).
    spacing : sequence of 3 float, optional
        Voxel size in mm per array axis after reorientation (a card's ``spacing``).
    normalization : mapping, optional
        A card's ``normalization`` (e.g. ``{"scheme": "zscore"}``); ``None`` keeps the
        intensities.

    Returns
    -------
    Case
        float32 image, integer labels, both on the new grid with its exact affine.
    """
    image, label = case.image, case.label
    if orientation:
        image, _ = reorient(image, orientation)
        label, _ = reorient(label, orientation)
    if spacing is not None and not np.allclose(image.spacing, spacing, rtol=1e-6, atol=0):
        affine, shape = spacing_grid(image.affine, image.spatial_shape, tuple(spacing))
        image = resample_to_grid(image, affine, shape, order=LINEAR)
        label = resample_to_grid(label, affine, shape, order=NEAREST)
    data = np.asarray(image.data, dtype=np.float32)
    if normalization is not None:
        units = case.image.meta.get("units")
        data = np.stack([normalize_intensity(c, normalization, units=units) for c in data])
    return Case(case.name,
                Volume(np.ascontiguousarray(data), image.affine, image.modality,
                       dict(image.meta)),
                Volume(np.ascontiguousarray(label.data), label.affine, "SEG",
                       dict(label.meta)))


class PatchDataset(Dataset):
    """Random training patches from in-memory cases, reproducible from a seed.

    Item ``i`` of epoch ``e`` is drawn with ``numpy.random.default_rng((seed, e, i))``, so
    it is the same whatever the number of loader workers or their order. Each item picks a
    case uniformly; with probability ``foreground_fraction`` (nnU-Net: 33 %) it picks a
    foreground class present in the case and one of its voxels uniformly, and places the
    patch so that voxel lies inside it (centred where the border allows); otherwise the
    patch lies anywhere in the volume. Axes shorter than the patch are padded with 0 on
    both sides (image and background label).

    Parameters
    ----------
    cases : sequence of Case
        Prepared cases (see :func:`prepare_case`), all with the same number of channels.
    patch_size : sequence of 3 int
        Patch shape in voxels.
    samples_per_epoch : int
        Length of the dataset (patches per epoch).
    foreground_fraction : float
        Probability (0-1) that a patch is forced to hold foreground.
    seed : int
        Seed of every draw.

    Items are ``(image, label)``: float32 ``(channels, *patch_size)`` and int64
    ``(1, *patch_size)`` tensors.
    """

    def __init__(self, cases: Sequence[Case], patch_size: Sequence[int], *,
                 samples_per_epoch: int, foreground_fraction: float = FOREGROUND_FRACTION,
                 seed: int = 0) -> None:
        if not cases:
            raise DimensionError("A patch dataset needs at least one case.")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise DimensionError(f"The patch size must be three positive voxel counts, got "
                                 f"{list(patch_size)}.")
        if not 0 <= foreground_fraction <= 1:
            raise DimensionError(f"The foreground fraction must be in [0, 1], got "
                                 f"{foreground_fraction}.")
        channels = {c.image.data.shape[0] for c in cases}
        if len(channels) != 1:
            raise DimensionError(f"The cases have different channel counts {sorted(channels)}.")
        self.cases = list(cases)
        self.samples_per_epoch = int(samples_per_epoch)
        self.foreground_fraction = float(foreground_fraction)
        self.seed = int(seed)
        self.epoch = 0
        rng = np.random.default_rng((self.seed, 2**31))  # apart from the item streams
        self._foreground = [_foreground_voxels(np.asarray(c.label.data), rng)
                            for c in self.cases]

    def set_epoch(self, epoch: int) -> None:
        """Draw the patches of epoch ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        number = int(rng.integers(len(self.cases)))
        case, foreground = self.cases[number], self._foreground[number]
        shape = np.asarray(case.label.data.shape)
        patch = np.asarray(self.patch_size)
        # Start range: inside the volume, or centred with padding where it is too small.
        low = np.minimum(0, -((patch - shape) // 2))
        high = np.maximum(shape - patch, low)
        if rng.random() < self.foreground_fraction and foreground:
            voxels = foreground[sorted(foreground)[int(rng.integers(len(foreground)))]]
            centre = voxels[int(rng.integers(len(voxels)))]
            start = np.clip(centre - patch // 2, low, high)
        else:
            start = np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])
        image = _crop(np.asarray(case.image.data), start, patch)
        label = _crop(np.asarray(case.label.data)[None], start, patch)
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))


def _foreground_voxels(label: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Up to FOREGROUND_SAMPLES voxel indices per foreground class present."""
    voxels = {}
    for value in np.unique(label):
        if value == 0:
            continue
        where = np.argwhere(label == value)
        if len(where) > FOREGROUND_SAMPLES:
            where = where[np.sort(rng.choice(len(where), FOREGROUND_SAMPLES, replace=False))]
        voxels[int(value)] = where
    return voxels


def _crop(array: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``array[:, start:start+size]`` over the last 3 axes, 0 where it falls outside."""
    out = np.zeros(array.shape[:1] + tuple(int(s) for s in size), dtype=array.dtype)
    source, target = [slice(None)], [slice(None)]
    for s, n, extent in zip(start, size, array.shape[1:]):
        lo, hi = max(int(s), 0), min(int(s) + int(n), extent)
        source.append(slice(lo, hi))
        target.append(slice(lo - int(s), hi - int(s)))
    out[tuple(target)] = array[tuple(source)]
    return out
