"""What a cohort is: its cases, read from a CSV, an MSD/nnU-Net folder or a folder of scans.

:func:`read_manifest` turns any of the three into a list of :class:`Case`:

* **CSV**, one case per row. Columns: ``case`` (a unique id), ``image`` (a NIfTI file, a
  DICOM file or a DICOM series folder; several files separated by ``;`` are the channels of
  one scan, in order), and optionally ``reference`` (a label map to score against) and
  ``moving`` (the second scan of a registration). Relative paths are relative to the CSV's
  folder. Example::

      case,image,reference
      sub-01,scans/sub-01.nii.gz,labels/sub-01.nii.gz
      sub-02,dicom/sub-02/,

* **MSD or nnU-Net folder**: a ``dataset.json`` beside ``imagesTr/`` (and optionally
  ``labelsTr/``, ``imagesTs/``). MSD lists its cases in ``dataset.json`` (``training``
  with labels, ``test`` without); nnU-Net v2 names them by file
  (``<case>_<channel:04d><file_ending>``, the label ``labelsTr/<case><file_ending>``).
* **A folder of scans**: every NIfTI file below it is a case (its path below the folder,
  without the suffix, is the id) and every folder holding DICOM files directly is a case.

A malformed manifest (unreadable, missing columns, a duplicate or empty case id, no
cases) raises one :class:`~napari_medattn.errors.ReadError` before any work starts. A
row naming a missing file is not the manifest's fault: it becomes that case's error
when the case runs, and the others still run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from napari_medattn.errors import ReadError

#: CSV columns: required, then optional.
REQUIRED_COLUMNS = ("case", "image")
OPTIONAL_COLUMNS = ("reference", "moving")
#: Separator of several channel files in the CSV's ``image`` column.
CHANNEL_SEPARATOR = ";"
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclasses.dataclass(frozen=True)
class Case:
    """One case of a cohort.

    Attributes
    ----------
    case_id : str
        Unique within the cohort; names the case's output folder.
    inputs : tuple of Path
        The scan: one file or series folder, or one per channel in channel order.
    reference : Path or None
        A reference label map on the scan's grid (Dice, HD95), when there is one.
    moving : Path or None
        The second scan of a registration (moved onto ``inputs``).
    """

    case_id: str
    inputs: tuple[Path, ...]
    reference: Path | None = None
    moving: Path | None = None

    def files(self) -> list[Path]:
        """Every path the case reads (scan, reference, moving), existing or not."""
        return [*self.inputs, *(p for p in (self.reference, self.moving) if p is not None)]


def read_manifest(source: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = ()
                  ) -> list[Case]:
    """The cases of a cohort, from a CSV file or a folder.

    Parameters
    ----------
    source : str or PathLike
        A CSV file, an MSD/nnU-Net dataset folder (with ``dataset.json``) or a folder of
        scans (see the module docstring).
    exclude : iterable of path
        Folders whose contents are never cases (the cohort's own output folder when it
        lies inside ``source``).

    Returns
    -------
    list of Case
        In manifest order (CSV rows) or sorted by id (folders).

    Raises
    ------
    ReadError
        The manifest is missing, unreadable or malformed, or names no case (one sentence).
    """
    path = Path(source)
    if not path.exists():
        raise ReadError(f"The manifest {path} does not exist.")
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".tsv"):
            raise ReadError(f"The manifest {path.name} is not a CSV file, an MSD/nnU-Net "
                            f"folder or a folder of scans.")
        cases = _from_csv(path)
    elif (path / "dataset.json").is_file():
        cases = _from_dataset(path)
    else:
        cases = _from_scan_folder(path, [Path(e).resolve() for e in exclude])
    if not cases:
        raise ReadError(f"The manifest {path} names no case.")
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise ReadError(f"The manifest {path.name} names the case {case.case_id!r} twice; "
                            f"case ids must be unique.")
        seen.add(case.case_id)
    return cases


def _from_csv(path: Path) -> list[Case]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ReadError(f"The manifest {path.name} cannot be read as UTF-8 text "
                        f"({getattr(error, 'strerror', None) or error}).") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        rows = list(reader)
    except csv.Error as error:
        raise ReadError(f"The manifest {path.name} is not valid CSV ({error}).") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ReadError(f"The manifest {path.name} lacks the column(s) {', '.join(missing)}; "
                        f"it needs {', '.join(REQUIRED_COLUMNS)} and may have "
                        f"{', '.join(OPTIONAL_COLUMNS)}.")
    base = path.parent
    cases = []
    for number, raw in enumerate(rows, start=2):  # line 1 is the header
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()
               if k is not None}
        if None in raw:
            raise ReadError(f"Line {number} of the manifest {path.name} has more fields than "
                            f"the header.")
        if not row["case"]:
            raise ReadError(f"Line {number} of the manifest {path.name} has no case id.")
        images = [base / p.strip() for p in row["image"].split(CHANNEL_SEPARATOR) if p.strip()]
        if not images:
            raise ReadError(f"Line {number} of the manifest {path.name} (case "
                            f"{row['case']!r}) names no image.")
        optional = {c: (base / row[c]) if row.get(c) else None for c in OPTIONAL_COLUMNS}
        cases.append(Case(row["case"], tuple(images), **optional))
    return cases


def _from_dataset(folder: Path) -> list[Case]:
    """MSD (cases listed in dataset.json) or nnU-Net v2 (cases named by file)."""
    try:
        spec = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReadError(f"{folder / 'dataset.json'} is not valid JSON ({error}).") from None
    if not isinstance(spec, dict):
        raise ReadError(f"{folder / 'dataset.json'} is not a JSON object.")
    if "training" in spec or "test" in spec:
        return _from_msd(folder, spec)
    ending = spec.get("file_ending", ".nii.gz")
    cases = []
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", None)):
        channels: dict[str, list[Path]] = {}
        for file in sorted((folder / images).glob(f"*{ending}")):
            match = _NNUNET_CHANNEL.match(file.name[:-len(ending)])
            if match is None:
                raise ReadError(f"{file.name} in {images} is not named <case>_<channel:04d>"
                                f"{ending} as nnU-Net expects.")
            channels.setdefault(match["case"], []).append(file)
        for case_id, files in sorted(channels.items()):
            reference = folder / labels / f"{case_id}{ending}" if labels else None
            cases.append(Case(case_id, tuple(files),
                              reference if reference is not None and reference.is_file()
                              else None))
    return cases


def _from_msd(folder: Path, spec: dict) -> list[Case]:
    cases = []
    entries = [(e, True) for e in spec.get("training", [])] + \
              [(e, False) for e in spec.get("test", [])]
    for entry, labelled in entries:
        image = entry.get("image") if isinstance(entry, dict) else entry
        if not isinstance(image, str):
            raise ReadError(f"{folder / 'dataset.json'} lists a case without an image path.")
        label = entry.get("label") if labelled and isinstance(entry, dict) else None
        path = folder / image
        cases.append(Case(_strip_nifti(path.name), (path,),
                          folder / label if isinstance(label, str) else None))
    return cases


def _from_scan_folder(folder: Path, exclude: list[Path]) -> list[Case]:
    # The package's own folder expansion decides what a scan is, as `medattn segment` does.
    from napari_medattn.io.folders import NIFTI, expand

    def excluded(path: Path) -> bool:
        resolved = path.resolve()
        return any(resolved == e or e in resolved.parents for e in exclude)

    cases = []
    for job in expand([folder], skip_earlier_outputs=True):
        if job.error is not None:
            raise ReadError(f"The folder {folder} holds no NIfTI files or DICOM series.")
        if job.kind == NIFTI:
            if not excluded(job.path):
                relative = job.path.relative_to(folder)
                cases.append(Case(_case_id(relative.parent / _strip_nifti(relative.name)),
                                  (job.path,)))
            continue
        # One case per folder that holds DICOM files itself.
        for series_folder in sorted({f.parent for f in job.files}):
            if not excluded(series_folder):
                relative = series_folder.relative_to(folder.resolve())
                cases.append(Case(_case_id(relative) if relative.parts else folder.name,
                                  (series_folder,)))
    return sorted(cases, key=lambda c: c.case_id)


def _strip_nifti(name: str) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def _case_id(relative: Path) -> str:
    """``sub-01/ses-1/t1`` -> ``sub-01_ses-1_t1``: one folder name per case."""
    return "_".join(part for part in relative.parts if part not in ("", "."))
