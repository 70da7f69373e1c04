"""The one reader entry: a path in, the volumes it holds out.

:func:`read` dispatches on what the path is (NIfTI file, DICOM file, DICOMDIR, folder
expanded by :mod:`napari_medattn.io.folders`) and adds the checks every volume gets
whatever its format (non-finite voxels).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_medattn.errors import MedAttnError, ReadError
from napari_medattn.io.dicom import read_dicom
from napari_medattn.io.folders import NIFTI, ReadJob, expand
from napari_medattn.io.nifti import read_nifti
from napari_medattn.io.volume import Volume


def read(path: str | os.PathLike, *, modality: str | None = None) -> list[Volume]:
    """Read every volume a path holds.

    Parameters
    ----------
    path : str or PathLike
        A NIfTI file (``.nii``, ``.nii.gz``), a DICOM file, a DICOMDIR, or a folder: its
        NIfTI files and its DICOM series, searched recursively (see
        :func:`napari_medattn.io.folders.expand`).
    modality : str, optional
        Override the modality found in (or guessed from) the file, e.g. ``"CT"`` for a
        NIfTI that does not say.

    Returns
    -------
    list of Volume
        One volume per NIfTI file or DICOM series, in LPS mm (see ``io.volume``). Notes a
        user should see (non-finite voxels, sheared geometry, skipped objects, a file of a
        folder that could not be read) are in each volume's ``meta["warnings"]``.

    Raises
    ------
    ReadError
        Missing path, unsupported or corrupt file, or a folder without readable images.
    GeometryError
        A DICOM series whose slices cannot be placed exactly (missing slices, uneven
        spacing).
    DimensionError
        More than 4 dimensions.
    """
    jobs = expand([path])
    if len(jobs) == 1:
        return read_job(jobs[0], modality=modality)
    volumes: list[Volume] = []
    failures: list[str] = []
    for job in jobs:
        try:
            volumes += read_job(job, modality=modality)
        except MedAttnError as error:
            failures.append(f"{job.path.name}: {str(error).rstrip('.')}")
    if not volumes:
        raise ReadError(f"None of the {len(jobs)} inputs in {Path(path).name} could be read: "
                        f"{'; '.join(failures)}.")
    # Said once, on the first volume, as the DICOM reader does for a series it skips.
    volumes[0].meta.setdefault("warnings", []).extend(f"Not loaded: {text}."
                                                      for text in failures)
    return volumes


def read_job(job: ReadJob, *, modality: str | None = None) -> list[Volume]:
    """Read one :class:`~napari_medattn.io.folders.ReadJob` (a NIfTI file or DICOM input).

    Parameters and errors as for :func:`read`; a job that carries an error raises it.
    """
    if job.error is not None:
        raise job.error
    if job.kind == NIFTI:
        volumes = [read_nifti(job.path, modality=modality)]
    else:
        # DICOM-SEGs come back as label maps (modality "SEG"), which the override leaves be.
        volumes = read_dicom(job.path)
        if modality is not None:
            for volume in volumes:
                if volume.modality != "SEG":
                    volume.modality = modality
    for volume in volumes:
        note = nonfinite_warning(volume.data)
        if note:
            volume.meta.setdefault("warnings", []).append(note)
    return volumes


def read_volume(path: str | os.PathLike, *, modality: str | None = None) -> Volume:
    """Read a path that must hold exactly one volume.

    Parameters
    ----------
    path, modality
        As for :func:`read`.

    Raises
    ------
    ReadError
        The path holds several volumes (the message lists them) or none.
    """
    volumes = read(path, modality=modality)
    if len(volumes) != 1:
        names = "; ".join(f"{v.name} {v.spatial_shape}" for v in volumes)
        raise ReadError(
            f"{Path(path).name} holds {len(volumes)} series ({names}); point to one "
            f"series folder or file."
        )
    return volumes[0]


def nonfinite_warning(data) -> str | None:
    """One sentence counting NaN/Inf voxels, or ``None`` when all voxels are finite.

    The data are left unchanged: whether NaN means "outside the brain mask" or a broken
    file is for the user to judge, so they are told rather than silently fixed.
    """
    if not np.issubdtype(data.dtype, np.floating):
        return None
    finite = np.isfinite(np.asarray(data))
    count = int(finite.size - np.count_nonzero(finite))
    if count == 0:
        return None
    return (f"{count} of {finite.size} voxels are NaN or infinite; they are kept as they "
            f"are and may upset contrast, statistics and models.")
