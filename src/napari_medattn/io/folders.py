"""Folder expansion: what a path the user names stands for, the same in napari and the CLI.

A file is read as it is. A folder stands for every NIfTI file in it (recursively, sorted)
and, when it holds DICOM files, for its DICOM series, read together so that each series is
one volume. Hidden files and folders (a leading dot, as the atomic writer's temporaries
have) are left out. :func:`~napari_medattn.io.reader.read` reads a folder through
:func:`expand`, and the ``medattn`` commands run over the same :class:`ReadJob` list, so
a folder opens as the same volumes in both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from napari_medattn.errors import MedAttnError, ReadError
from napari_medattn.io.dicom.files import find_dicom_files
from napari_medattn.io.nifti import is_nifti
from napari_medattn.io.provenance import PROVENANCE, read_outputs

#: :attr:`ReadJob.kind` of a NIfTI file.
NIFTI = "nifti"
#: :attr:`ReadJob.kind` of a DICOM file, DICOMDIR or a folder's DICOM series.
DICOM = "dicom"


@dataclasses.dataclass(frozen=True)
class ReadJob:
    """One read: a NIfTI file, a DICOM file or DICOMDIR, or a folder's DICOM series.

    Attributes
    ----------
    path : Path
        What to read.
    kind : str
        :data:`NIFTI` or :data:`DICOM`.
    files : frozenset of Path
        The resolved image files it covers (outputs must never be written over them).
    error : MedAttnError or None
        Set when the path was found unusable before reading (missing, no images).
    """

    path: Path
    kind: str
    files: frozenset[Path]
    error: MedAttnError | None = None


def expand(paths: Iterable[str | os.PathLike], *, skip_earlier_outputs: bool = False
           ) -> list[ReadJob]:
    """The reads that the given paths stand for, in order.

    Parameters
    ----------
    paths : iterable of str or PathLike
        Files (NIfTI, DICOM, DICOMDIR) and folders.
    skip_earlier_outputs : bool
        Leave out NIfTI files that a ``*_provenance.json`` in the folder lists as outputs
        of an earlier run, so that a command's ``--out`` may lie inside an input folder
        (the CLI sets it; napari opens whatever the folder holds).

    Returns
    -------
    list of ReadJob
        A missing path, or a folder with neither NIfTI nor DICOM files, is a job whose
        ``error`` says so, so that a batch can report it and go on.
    """
    jobs: list[ReadJob] = []
    for path in map(Path, paths):
        if not path.exists():
            jobs.append(ReadJob(path, DICOM, frozenset(), ReadError(f"{path} does not exist.")))
        elif not path.is_dir():
            jobs.append(ReadJob(path, NIFTI if is_nifti(path) else DICOM,
                                frozenset({path.resolve()})))
        else:
            jobs += _folder_jobs(path, skip_earlier_outputs)
    return jobs


def _folder_jobs(folder: Path, skip_earlier_outputs: bool) -> list[ReadJob]:
    earlier = _earlier_outputs(folder) if skip_earlier_outputs else set()
    niftis = sorted(p for p in folder.rglob("*") if p.is_file() and is_nifti(p)
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                    and p.resolve() not in earlier)
    # The DICOM reader's own notion of candidates, so both agree on what a series is.
    dicom = [file for file, _ in find_dicom_files(folder)[0]]
    if not niftis and not dicom:
        return [ReadJob(folder, DICOM, frozenset(),
                        ReadError(f"{folder} holds no NIfTI or DICOM files."))]
    jobs = [ReadJob(p, NIFTI, frozenset({p.resolve()})) for p in niftis]
    if dicom:
        jobs.append(ReadJob(folder, DICOM, frozenset(p.resolve() for p in dicom)))
    return jobs


def _earlier_outputs(folder: Path) -> set[Path]:
    """Files under ``folder`` that provenance records of earlier runs list as outputs."""
    return {output.resolve() for record in folder.rglob(f"*_{PROVENANCE}.json")
            for output in read_outputs(record)}
