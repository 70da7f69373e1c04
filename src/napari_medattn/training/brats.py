"""A BraTS-layout folder as a dataset: per case ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair``
and ``*_seg`` NIfTI files, labels 1 (necrotic / non-enhancing core), 2 (oedema) and 4
(enhancing tumour).

>>> cases = brats_case_folders("MICCAI_BraTS2020_TrainingData")
>>> case = read_brats_case(cases[0])    # MultimodalCase: images by modality, BraTS labels

The folder is either one case (the five files side by side) or a folder of case folders,
as the BraTS challenges ship them (``BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz``).
Files go through the one reader entry (:func:`napari_medattn.io.reader.read_volume`), so
their exact affines are kept; the labels must lie on the images' grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_medattn.errors import DimensionError, GeometryError, ReadError
from napari_medattn.io.reader import read_volume
from napari_medattn.io.volume import Volume
from napari_medattn.models.brats import BRATS_LABELS, BRATS_MODALITIES, labels_to_classes
from napari_medattn.training.multimodal_synthesis import MultimodalCase

__all__ = ["BRATS_SUFFIXES", "brats_case_folders", "brats_files", "read_brats_case"]

#: File-name endings (before ``.nii`` / ``.nii.gz``) of a BraTS case, by role.
BRATS_SUFFIXES: tuple[str, ...] = (*BRATS_MODALITIES, "seg")
_NIFTI = (".nii.gz", ".nii")


def _role(name: str) -> str | None:
    lower = name.lower()
    for ending in _NIFTI:
        if lower.endswith(ending):
            stem = lower[: -len(ending)]
            return next((r for r in BRATS_SUFFIXES if stem.endswith(f"_{r}")), None)
    return None


def brats_files(case_folder: str | os.PathLike) -> dict[str, Path]:
    """The BraTS files of one case folder by role (``t1``, ``t1ce``, ``t2``, ``flair``,
    ``seg``); roles without a file are left out.

    Raises
    ------
    ReadError
        Two files claim the same role.
    """
    folder = Path(case_folder)
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        role = _role(path.name)
        if role is None:
            continue
        if role in found:
            raise ReadError(f"Case {folder.name} has two {role} files ({found[role].name} and "
                            f"{path.name}); keep one.")
        found[role] = path
    return found


def brats_case_folders(folder: str | os.PathLike) -> list[Path]:
    """The case folders of a BraTS-layout folder, sorted by name (the folder itself when it
    is one case).

    Raises
    ------
    ReadError
        Not a folder, or no case in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ReadError(f"{root} is not a folder; give a BraTS-layout folder of cases.")
    if brats_files(root):
        return [root]
    cases = [p for p in sorted(root.iterdir()) if p.is_dir() and brats_files(p)]
    if not cases:
        raise ReadError(f"{root.name} holds no BraTS case: expected case folders with "
                        f"*_t1, *_t1ce, *_t2, *_flair and *_seg NIfTI files.")
    return cases


def read_brats_case(case_folder: str | os.PathLike, *,
                    modalities: Sequence[str] = BRATS_MODALITIES,
                    labels: bool = True, index: int = 0) -> MultimodalCase:
    """Read one BraTS case.

    Parameters
    ----------
    case_folder : path
        A folder holding the case's NIfTI files.
    modalities : sequence of str
        Modalities the case must have (BraTS spelling).
    labels : bool
        Whether the ``*_seg`` file is required (False: ``labels`` is None if absent).
    index : int
        Stored as the case's ``seed`` (its number in the dataset).

    Returns
    -------
    MultimodalCase
        ``images`` by modality (MR Volumes with their exact affines) and ``labels`` (uint8
        BraTS values 0, 1, 2, 4) on the images' grid.

    Raises
    ------
    ReadError
        A required file is missing or unreadable.
    GeometryError
        A file's grid (shape or affine) differs from the first modality's.
    DimensionError
        The labels hold values other than 0, 1, 2 and 4.
    """
    folder = Path(case_folder)
    files = brats_files(folder)
    wanted = [m.lower() for m in modalities] + (["seg"] if labels else [])
    missing = [r for r in wanted if r not in files]
    if missing:
        raise ReadError(f"Case {folder.name} has no {', '.join(missing)} file "
                        f"(*_{missing[0]}.nii.gz).")
    images = {m: read_volume(files[m], modality="MR") for m in modalities if m in files}
    first_name, first = next(iter(images.items()))
    seg = read_volume(files["seg"], modality="SEG") if "seg" in files else None
    for role, volume in [*images.items(), ("seg", seg)]:
        if volume is None:
            continue
        if volume.spatial_shape != first.spatial_shape or not np.allclose(
                volume.affine, first.affine, atol=1e-3):
            raise GeometryError(f"Case {folder.name}: the {role} file is on another grid "
                                f"than the {first_name} file; BraTS cases share one grid.")
    if seg is not None:
        values = np.rint(np.asarray(seg.data)).astype(np.int64)
        try:
            labels_to_classes(values)
        except DimensionError as error:
            raise DimensionError(f"Case {folder.name}: {error}") from None
        seg = Volume(values.astype(np.uint8), seg.affine.copy(), "SEG",
                     {**seg.meta, "labels": dict(BRATS_LABELS)})
    return MultimodalCase(images=images, labels=seg, seed=index)
