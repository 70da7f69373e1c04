"""Which files are DICOM: a folder's candidates, the Part 10 marker, DICOMDIR listings.

Shared by the DICOM reader (:mod:`napari_medattn.io.dicom.read`), the folder expansion and the
napari reader hook, so that all three agree on what a DICOM file is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.fileset import FileSet

from napari_medattn.errors import ReadError
from napari_medattn.io.dicom.pixels import first_line
from napari_medattn.io.nifti import is_nifti

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# File names without a DICM preamble are tried only with these suffixes.
_DICOM_SUFFIXES = {"", ".dcm", ".dic", ".dicom", ".ima"}


def find_dicom_files(folder: Path) -> tuple[list[tuple[Path, bool]], int]:
    """DICOM candidates in a folder tree (with whether to force-parse), and the others."""
    found, ignored = [], 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            file = Path(root) / name
            preamble = has_dicom_preamble(file)
            if preamble or file.suffix.lower() in _DICOM_SUFFIXES:
                found.append((file, not preamble))
            else:
                ignored += not is_nifti(file)  # read by the folder expansion
    return found, ignored


def has_dicom_preamble(path: Path) -> bool:
    """Whether ``path`` carries the DICOM Part 10 'DICM' marker after its 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicomdir(path: Path) -> bool:
    """Whether ``path`` is a DICOMDIR (by its name or its Media Storage SOP class)."""
    if path.name.upper() == "DICOMDIR":
        return True
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # not DICOM at all: left to the file reader to report
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY


def dicomdir_files(path: Path) -> tuple[list[tuple[Path, bool]], int]:
    """The files a DICOMDIR lists that exist (not force-parsed), and how many are missing.

    Raises
    ------
    ReadError
        The DICOMDIR itself cannot be read.
    """
    try:
        file_set = FileSet(pydicom.dcmread(path))
    except Exception as error:
        raise ReadError(f"{path} is not a readable DICOMDIR ({first_line(error)}).") from None
    found, missing = [], 0
    for instance in file_set:
        file = Path(instance.path)
        if file.is_file():
            found.append((file, False))
        else:
            missing += 1
    return found, missing
