"""The one provenance record written beside every output: what made it, from what, how.

Every ``medattn`` command and every cohort case writes the same record (its JSON schema is
``docs/provenance.schema.json``; :data:`SCHEMA_VERSION` changes when a key changes)::

    record = Provenance("segment", parameters={"overlap": 0.5})
    record.add_input(path, volume)            # sha256 of the file(s), series UID, grid
    record.set_model(card)                    # name, weights sha256, card
    record.device, record.precision = "cpu", "float32"
    record.outputs["labels"] = "head_labels.nii.gz"
    record.write(out_dir / "head_provenance.json")   # atomic; sets runtime and finish time

Keys: ``schema_version``, ``command``, ``package_version``, ``inputs`` (path, sha256,
series UID, name, modality, shape, affine in LPS mm, reader warnings), ``parameters``,
``model`` (name, weights sha256, card; null without a model), ``device``, ``precision``,
``runtime_s``, ``outputs`` (key -> file name beside the record), ``started_utc``,
``finished_utc``, ``notes`` (sentences for the user) and ``details`` (what only one
command has, e.g. the windows of a segmentation or the maps of an explanation).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import napari_medattn
from napari_medattn.io.atomic import write_text_atomically

#: Version of the record's keys; bump it (and the schema file) when a key changes.
SCHEMA_VERSION = 1
#: File-name kind of the record beside a volume's outputs: ``<name>_provenance.json``.
PROVENANCE = "provenance"
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of one file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """One SHA-256 for a set of files, independent of their names and order.

    For one file it is that file's SHA-256; for several (the files of a DICOM series) it is
    the SHA-256 of their sorted hex digests joined by newlines, so moving or renaming the
    files of a series keeps its hash and changing any byte changes it.
    """
    digests = sorted(file_sha256(p) for p in paths)
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


def input_record(path: str | os.PathLike, volume: Any = None) -> dict[str, Any]:
    """The ``inputs`` entry for a path and, when read, the volume taken from it.

    Parameters
    ----------
    path : str or PathLike
        What the user named (a file, a folder or a DICOMDIR).
    volume : Volume, optional
        The volume read from ``path``. Its source files (``meta["source_files"]`` for a
        DICOM series, else ``meta["source"]``) are hashed; without it ``path`` is hashed
        when it is a file.

    Returns
    -------
    dict
        ``path``, ``sha256`` (see :func:`files_sha256`; None for a folder without a
        volume), ``series_uid`` (DICOM only, else None), ``name``, ``modality``,
        ``shape`` (voxels), ``affine_lps`` (voxel index -> patient mm, 4x4) and
        ``warnings`` (the reader's notes); the volume's keys are None without one.
    """
    path = Path(path)
    record: dict[str, Any] = {"path": str(path), "sha256": None, "series_uid": None,
                              "name": None, "modality": None, "shape": None,
                              "affine_lps": None, "warnings": []}
    files: list[str | os.PathLike] = [path] if path.is_file() else []
    if volume is not None:
        meta = volume.meta
        files = list(meta.get("source_files") or
                     ([meta["source"]] if meta.get("source") else files))
        record.update(series_uid=meta.get("series_uid"), name=volume.name,
                      modality=volume.modality, shape=[int(n) for n in volume.spatial_shape],
                      affine_lps=volume.affine.tolist(),
                      warnings=[str(w) for w in meta.get("warnings", [])])
    existing = [f for f in files if Path(f).is_file()]
    if existing:
        record["sha256"] = files_sha256(existing)
    return record


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (``2026-12-03T13:15:00Z``)."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


@dataclasses.dataclass
class Provenance:
    """A provenance record being filled in while a command runs.

    Created when the work starts (that sets ``started_utc`` and the runtime clock); the
    command adds inputs, the model, the device, outputs and notes; :meth:`to_dict` or
    :meth:`write` finish it.

    Attributes
    ----------
    command : str
        The ``medattn`` subcommand (or ``"cohort"`` step) that made the outputs.
    parameters : dict
        The options that change the result, as JSON values.
    """

    command: str
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    model: dict[str, Any] | None = None
    device: str | None = None
    precision: str | None = None
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    started_utc: str = dataclasses.field(default_factory=utc_now)
    _clock: float = dataclasses.field(default_factory=time.perf_counter, repr=False)

    def add_input(self, path: str | os.PathLike, volume: Any = None) -> None:
        """Record one input (see :func:`input_record`); its reader warnings become notes."""
        entry = input_record(path, volume)
        self.inputs.append(entry)
        self.notes.extend(w for w in entry["warnings"] if w not in self.notes)

    def set_model(self, card: Any) -> None:
        """Record the model from its card: name, weights SHA-256 and the card itself."""
        self.model = {"name": card.name, "weights_sha256": card.weights_sha256,
                      "card": card.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        """The finished record: runtime and finish time are taken now."""
        return {
            "schema_version": SCHEMA_VERSION,
            "command": self.command,
            "package_version": napari_medattn.__version__,
            "inputs": self.inputs,
            "parameters": self.parameters,
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "runtime_s": time.perf_counter() - self._clock,
            "outputs": dict(self.outputs),
            "started_utc": self.started_utc,
            "finished_utc": utc_now(),
            "notes": list(self.notes),
            "details": self.details,
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Finish the record and write it as JSON to ``path`` atomically; returns ``path``."""
        record = self.to_dict()
        return write_text_atomically(
            path, lambda f: json.dump(record, f, indent=2, default=json_default))


def read_outputs(record_path: str | os.PathLike) -> list[Path]:
    """The output files a provenance record lists, as paths beside it ([] if not ours)."""
    record_path = Path(record_path)
    try:
        outputs = json.loads(record_path.read_text(encoding="utf-8")).get("outputs", {})
    except (OSError, ValueError, AttributeError):
        return []  # not one of ours: its neighbours are treated as inputs
    if not isinstance(outputs, dict):
        return []
    return [record_path.parent / str(name) for name in outputs.values()]


def json_default(value: Any) -> Any:
    """numpy scalars and arrays, and paths, as JSON values (``json.dump(default=...)``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
