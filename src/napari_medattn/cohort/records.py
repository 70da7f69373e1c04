"""A cohort's output folder and its case records: what is done, with which inputs and
parameters, so that a rerun does only what changed.

Layout::

    DIR/cohort.json            the task and its parameters (what a rerun must match)
    DIR/cases/<case>/          the case's outputs (the command's own files) and
    DIR/cases/<case>/case.json its record, written last

A case record is the package's one provenance record (:mod:`napari_medattn.io.provenance`,
command ``cohort <task>``) whose ``details`` hold the case id, ``status`` (:data:`DONE` or
:data:`FAILED`), ``error`` (one sentence), ``error_kind`` (:data:`INPUT_ERROR`: bad input,
not retried until the input changes; :data:`CRASH`, :data:`KILLED` and :data:`MEMORY`:
retried by the next run), ``memory_budget_bytes`` (what the case planned against), the task's ``figures``, ``parameters_sha256``, ``inputs_sha256`` and ``input_stats``.

Input hashes are SHA-256 of the files' bytes; a rerun re-reads a file only when its size
or modification time differ from the record's (as make and rsync decide), so a rerun over a
large cohort reads the records, not the scans.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from napari_medattn.cohort.manifest import Case
from napari_medattn.errors import WriteError

COHORT_FILE = "cohort.json"
CASES_DIR = "cases"
CASE_RECORD = "case.json"
#: Case statuses in the records and the results table.
DONE, FAILED, NOT_RUN = "done", "failed", "not run"
#: Error kinds: bad input is not retried until the input changes; the others are (a case
#: the memory planner refused on its worker may fit on a worker with more memory).
INPUT_ERROR, CRASH, KILLED, MEMORY = "input", "crash", "killed", "memory"


def new_record(task: Any, case: Case, parameters_sha: str, inputs_sha: str | None,
                stats: dict):
    from napari_medattn.io.provenance import Provenance

    record = Provenance(f"cohort {task.name}", task.parameters())
    for path in case.files():
        record.inputs.append(_input_entry(path))
    record.details.update(case=case.case_id, status=DONE, error=None, error_kind=None,
                          figures={}, parameters_sha256=parameters_sha,
                          inputs_sha256=inputs_sha, input_stats=stats)
    return record


def _input_entry(path: Path) -> dict:
    """The provenance entry of one input, without reading a volume (cheap: the case's own
    outputs carry the full entry with series UID and grid)."""
    from napari_medattn.io.provenance import input_record

    return input_record(path) if path.exists() else {
        **input_record(path), "warnings": [f"{path} does not exist."]}


def set_status(record, status: str, error: str | None, kind: str | None) -> None:
    record.details.update(status=status, error=error, error_kind=kind)


def write_record(record, folder: Path) -> dict:
    data = record.to_dict()
    from napari_medattn.io.atomic import write_text_atomically
    from napari_medattn.io.provenance import json_default

    write_text_atomically(folder / CASE_RECORD,
                          lambda f: json.dump(data, f, indent=2, default=json_default))
    return data


def read_record(case_dir: Path) -> dict | None:
    """A case folder's record, or None when there is none (or it is not readable)."""
    try:
        record = json.loads((case_dir / CASE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("details"), dict) \
        else None


def plan_case(case: Case, case_dir: Path, parameters_sha: str
              ) -> tuple[str | None, dict, bool]:
    """``(inputs_sha256, input stats, must run)`` for a case given its earlier record.

    Reads no scan: when every input has the size and modification time its record says,
    the recorded hash stands; otherwise the hash is None and the worker that runs the case
    computes it (reading the files in parallel, where they are read anyway) and returns
    the earlier record if the content turns out unchanged.
    """
    record = read_record(case_dir)
    details = record["details"] if record else {}
    stats = {str(p): _stat(p) for p in case.files()}
    if not (record and details.get("input_stats") == stats and details.get("inputs_sha256")):
        return None, stats, True
    inputs_sha = details["inputs_sha256"]
    return inputs_sha, stats, not is_settled(record, inputs_sha, parameters_sha)


def is_settled(record: dict | None, inputs_sha: str, parameters_sha: str) -> bool:
    """Whether a case record stands for these inputs and parameters: done, or failed on
    bad input (which fails again until the input changes)."""
    if record is None:
        return False
    details = record["details"]
    same = (details.get("inputs_sha256") == inputs_sha
            and details.get("parameters_sha256") == parameters_sha)
    return same and (details.get("status") == DONE or (
        details.get("status") == FAILED and details.get("error_kind") == INPUT_ERROR))


def _stat(path: Path) -> list[int] | None:
    """Size and modification time of a file, or of a folder's files together."""
    try:
        if path.is_dir():
            files = [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
            return [sum(s.st_size for s in files), max((s.st_mtime_ns for s in files),
                                                       default=0), len(files)]
        info = path.stat()
        return [info.st_size, info.st_mtime_ns]
    except OSError:
        return None


def inputs_sha256(case: Case) -> str:
    """One SHA-256 over the case's inputs by role (a missing file counts as missing)."""
    from napari_medattn.io.provenance import files_sha256

    def digest(path: Path) -> str:
        files = [p for p in sorted(path.iterdir()) if p.is_file()] if path.is_dir() else \
            [path] if path.is_file() else []
        return files_sha256(files) if files else "missing"

    parts = {"inputs": [digest(p) for p in case.inputs],
             "reference": digest(case.reference) if case.reference else None,
             "moving": digest(case.moving) if case.moving else None}
    return sha256_json(parts)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def check_out_folder(out: Path, task: str, parameters: dict, rerun_changed: bool) -> None:
    """Refuse, in one sentence, a folder that is not this cohort's (see :func:`run`)."""
    if out.exists() and not out.is_dir():
        raise WriteError(f"{out} is a file, not a folder for the cohort's results.")
    marker = out / COHORT_FILE
    if not marker.is_file():
        if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
            raise WriteError(f"{out} holds files that are not a cohort's results; choose a "
                             f"new or empty folder.")
        return
    try:
        earlier = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise WriteError(f"{marker} cannot be read; choose another folder.") from None
    if earlier.get("task") != task:
        raise WriteError(f"{out} holds the results of a {earlier.get('task')} cohort; "
                         f"choose another folder for {task}.")
    if earlier.get("parameters") != parameters and not rerun_changed:
        changed = _changed_keys(earlier.get("parameters") or {}, parameters)
        raise WriteError(f"{out} holds results made with other parameters "
                         f"({', '.join(changed)} differ); pass --rerun-changed to redo every "
                         f"case with the new ones, or choose another folder.")


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}".removeprefix("options."))
    return keys


def write_cohort_file(out: Path, task: str, parameters: dict, parameters_sha: str,
                       manifest: Any) -> None:
    from napari_medattn.io.atomic import write_text_atomically
    from napari_medattn.io.provenance import utc_now

    out.mkdir(parents=True, exist_ok=True)
    (out / CASES_DIR).mkdir(exist_ok=True)
    record = {"kind": "napari-medattn cohort", "task": task, "parameters": parameters,
              "parameters_sha256": parameters_sha,
              "manifest": str(manifest) if isinstance(manifest, (str, os.PathLike)) else None,
              "updated_utc": utc_now()}
    write_text_atomically(out / COHORT_FILE, lambda f: json.dump(record, f, indent=2))
