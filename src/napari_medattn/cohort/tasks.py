"""What a cohort runs on each case: one small adapter per ``medattn`` command.

A task is a picklable object that Dask sends to every worker once. On the worker,
:meth:`CohortTask.load` runs once (through :class:`~napari_medattn.cohort.run.TaskPlugin`)
and keeps what is expensive (the model); :meth:`CohortTask.run_case` then runs one case
into its own output folder and returns its figures and output files. Adding a task is a
subclass with those two methods, :attr:`~CohortTask.name` and an entry in :data:`TASKS`.

The file-to-files commands (``segment``, ``explain``) are wrapped as they are: the task's
options are parsed by the command's own parser (so ``--task segment --tta`` means what
``medattn segment --tta`` means), ``load`` is the command's own set-up, and each case is
one pass of the command's own per-volume function, so a case's outputs are the files
``medattn segment CASE --out CASE_DIR`` writes, byte for byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from napari_medattn.cohort.manifest import Case
from napari_medattn.errors import DimensionError, GeometryError, ModelError, ReadError


@dataclasses.dataclass
class CaseOutput:
    """What one case produced.

    Attributes
    ----------
    figures : dict of str to float, int or str
        The task's key figures, one results-table column each (``volume_ml_<class>``,
        ``dice_<class>``, ``hd95_mm_<class>``, ...).
    outputs : dict of str to str
        Output files by kind, relative to the case's folder.
    notes : list of str
        Sentences for the user (reader warnings, device fallback, ...).
    model : dict or None
        The model's provenance entry (name, weights SHA-256, card), when there is one.
    """

    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    model: dict[str, Any] | None = None


class CohortTask:
    """Base of the cohort tasks (see the module docstring): subclasses set :attr:`name`
    and override :meth:`run_case`, and :meth:`load` when they hold a model."""

    name: ClassVar[str] = ""

    def parameters(self) -> dict[str, Any]:
        """Everything that changes a case's results, as JSON values; a change reruns
        every case."""
        return {"task": self.name}

    def resources(self) -> dict[str, float]:
        """Dask resource annotations of each case (``{"GPU": 1}``: only workers started
        with ``--resources GPU=1`` take it)."""
        return {}

    def load(self, memory: Any = None) -> Any:
        """Set up once per worker (load the model); the result is given to every case.

        ``memory`` is the worker's :class:`~napari_medattn.inference.window_options.
        MemoryBudget` (None when the worker has no memory limit): what a task's memory
        planner plans against."""
        return None

    def run_case(self, state: Any, case: Case, case_dir: Path) -> CaseOutput:
        """Run one case, writing its outputs into ``case_dir`` (which exists)."""
        raise NotImplementedError


class CommandTask(CohortTask):
    """A task that is a ``medattn`` command, its options in the command's own syntax.

    Attributes
    ----------
    options : list of str
        E.g. ``["--tta", "--model", "x"]``, checked by the command's parser.
    args : argparse.Namespace
        The parsed options.
    """

    #: Positional placeholders the command's parser needs besides the options.
    _placeholders: ClassVar[tuple[str, ...]] = ("CASE", "--out", "CASE_DIR")

    def __init__(self, options: Sequence[str] = ()) -> None:
        self.options = list(options)
        self.args = parse_command_options(self.name, self._placeholders, self.options)
        self._parameters: dict[str, Any] | None = None

    def parameters(self) -> dict[str, Any]:
        """The task, its options, and the SHA-256 of the model's files (computed once, on
        the client: the workers get it with the task)."""
        if self._parameters is None:
            values = {k: v for k, v in sorted(vars(self.args).items())
                      if k not in ("inputs", "out", "func", "pred", "ref", "fixed", "moving")}
            parameters: dict[str, Any] = {"task": self.name, "options": values}
            if "model" in values:  # the same name or path may hold other weights tomorrow
                parameters["model_sha256"] = model_files_sha256(values["model"])
            self._parameters = json.loads(json.dumps(parameters, default=str))
        return self._parameters

    def resources(self) -> dict[str, float]:
        """``{"GPU": 1}`` when the options ask for a CUDA device."""
        device = str(getattr(self.args, "device", "cpu") or "cpu").lower()
        return {"GPU": 1} if device.startswith("cuda") else {}


class VolumeCommandTask(CommandTask):
    """A file-to-files command (segment, detect, explain) run on each case's one scan.

    Subclasses name the command and :meth:`figures`; the command module provides
    ``prepare_<name>(args, memory=None) -> (one_volume, parameters)``, the set-up its own
    ``run_<name>`` uses (``memory``: the worker's budget its window batches are planned
    against).
    """

    def load(self, memory: Any = None) -> tuple[Callable, dict]:
        module = importlib.import_module(f"napari_medattn.cli.{self.name}")
        return getattr(module, f"prepare_{self.name}")(self.args, memory=memory)

    def run_case(self, state: tuple[Callable, dict], case: Case, case_dir: Path) -> CaseOutput:
        from napari_medattn.cli.common import OutputNamer, VolumeOutput
        from napari_medattn.io.provenance import Provenance

        one_volume, parameters = state
        volume, input_path, files = read_case_scan(case, self.args.modality)
        item = VolumeOutput(volume, input_path, Provenance(self.name, dict(parameters)),
                            OutputNamer(case_dir, files))
        item.record.add_input(input_path, volume)
        one_volume(item)
        item.write_record()
        record = item.record
        outputs = {**record.outputs, "provenance": item.path("provenance", ".json").name}
        return CaseOutput(self.figures(case, case_dir, record), outputs, list(record.notes),
                          record.model)

    def figures(self, case: Case, case_dir: Path, record: Any) -> dict[str, Any]:
        """The case's key figures from its outputs and provenance record."""
        return {}


class SegmentTask(VolumeCommandTask):
    """``medattn segment`` on each case; figures: per-class volumes in mL and, where the
    case has a reference, per-class Dice and HD95 (mm)."""

    name = "segment"

    def figures(self, case: Case, case_dir: Path, record: Any) -> dict[str, Any]:
        from napari_medattn.io import read_volume

        if not record.outputs["labels"].endswith((".nii.gz", ".nii")):
            return {}  # --format dicom-seg: the SEG's frames are not a label map to measure
        labels = read_volume(case_dir / record.outputs["labels"])
        reference = read_volume(case.reference) if case.reference is not None else None
        names = {index: c["name"] for index, c in enumerate(record.model["card"]["classes"])}
        return label_figures(labels, reference, classes=sorted(set(names) - {0}),
                             class_names=names)


class ExplainTask(VolumeCommandTask):
    """``medattn explain`` on each case; figures: the number of maps written."""

    name = "explain"

    def figures(self, case: Case, case_dir: Path, record: Any) -> dict[str, Any]:
        return {"maps": len(record.outputs)}


class DetectTask(VolumeCommandTask):
    """``medattn detect`` on each case; figures: the number of lesion boxes found."""

    name = "detect"

    def figures(self, case: Case, case_dir: Path, record: Any) -> dict[str, Any]:
        return {"detections": int(record.details.get("detections", 0))}


class RegisterTask(CommandTask):
    """``medattn register`` of each case's ``moving`` scan onto its image; writes the
    command's warped scan, transform, det J map, QA and provenance into the case's folder.
    Figures: the registration QA (``qa_<figure>``: folding %, SD of log det J, Dice of
    warped labels, TRE in mm where the command computes them)."""

    name = "register"
    _placeholders = ("FIXED", "MOVING", "--out", "CASE_DIR")

    def run_case(self, state: Any, case: Case, case_dir: Path) -> CaseOutput:
        import contextlib
        import io

        from napari_medattn.cli.register import run_register

        if case.moving is None:
            raise ReadError(f"Case {case.case_id} names no moving scan to register.")
        args = argparse.Namespace(**{**vars(self.args), "fixed": str(case.inputs[0]),
                                     "moving": str(case.moving), "out": str(case_dir)})
        with contextlib.redirect_stdout(io.StringIO()):  # the command's summary lines
            run_register(args)
        record = json.loads((case_dir / "provenance.json").read_text(encoding="utf-8"))
        figures = _flat_numbers("qa", record.get("details", {}).get("qa", {}))
        return CaseOutput(_json_numbers(figures),
                          {**record.get("outputs", {}), "provenance": "provenance.json"},
                          list(record.get("notes", [])), record.get("model"))


class EvaluateTask(CommandTask):
    """``medattn evaluate`` on each case: its image is a predicted label map, scored
    against its reference; writes the command's scores.csv, summary.csv and
    evaluation.json into the case's folder."""

    name = "evaluate"
    _placeholders = ("PRED", "REF")

    def run_case(self, state: Any, case: Case, case_dir: Path) -> CaseOutput:
        from napari_medattn.cli.evaluate import parse_classes
        from napari_medattn.metrics import evaluate_paths, write_report

        if case.reference is None:
            raise ReadError(f"Case {case.case_id} has no reference to evaluate against.")
        if len(case.inputs) != 1:
            raise ReadError(f"Case {case.case_id} names {len(case.inputs)} images; evaluate "
                            f"takes one predicted label map.")
        classes, names = parse_classes(self.args.classes)
        report = evaluate_paths(case.inputs[0], case.reference, classes=classes,
                                class_names=names)
        if report.problems:
            raise GeometryError(report.problems[0][1])
        figures: dict[str, Any] = {}
        for score in report.scores:
            name = _column_name(score.name)
            figures.update({f"volume_ml_{name}": score.volume_pred_ml,
                            f"dice_{name}": score.dice, f"hd95_mm_{name}": score.hd95_mm})
        written = write_report(report, case_dir)
        return CaseOutput(_json_numbers(figures), {p.stem: p.name for p in written})


#: Tasks by ``--task`` name.
TASKS: dict[str, type[CommandTask]] = {
    task.name: task for task in (SegmentTask, DetectTask, RegisterTask, ExplainTask,
                                 EvaluateTask)}


def make_task(name: str, options: Sequence[str] = ()) -> CohortTask:
    """The task called ``name`` with its options in the command's syntax.

    Raises
    ------
    ModelError
        Unknown task name (the sentence lists the known ones).
    """
    if name not in TASKS:
        raise ModelError(f"Unknown cohort task {name!r}; choose one of {', '.join(TASKS)}.")
    return TASKS[name](options)


def parse_command_options(name: str, placeholders: Sequence[str], options: Sequence[str]
                          ) -> argparse.Namespace:
    """Parse a task's options with the ``medattn NAME`` parser itself.

    ``placeholders`` stand in for the command's inputs and ``--out`` (the cohort gives
    those per case). A bad option ends the program with the command's usage, as argparse
    does on the command line.
    """
    from napari_medattn.cli import COMMANDS

    if name not in COMMANDS:
        raise ModelError(f"Unknown cohort task {name!r}; choose one of {', '.join(TASKS)}.")
    parser = argparse.ArgumentParser(prog="medattn cohort run")
    subparsers = parser.add_subparsers()
    importlib.import_module(f"napari_medattn.cli.{name}").register(subparsers)
    subparsers.choices[name].prog = f"medattn cohort run --task {name}"
    return parser.parse_args([name, *placeholders, *options])


def model_files_sha256(model: str | None) -> str:
    """SHA-256 of the files that make a ``--model`` value (the default model's when None):
    a folder's files, a weights file, or a listed model's folder."""
    from napari_medattn.io.provenance import files_sha256
    from napari_medattn.models.registry import default_model, find_model

    if model is None:
        path = default_model().path
    else:
        path = Path(model)
        if not path.exists():
            path = find_model(str(model)).path
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not p.name.startswith(".")) if path.is_dir() else [path]
    return files_sha256(files) if files else hashlib.sha256(b"").hexdigest()


def read_case_scan(case: Case, modality: str | None):
    """The case's scan as one Volume: ``(volume, input_path, protected files)``.

    Several inputs are the channels of one scan and must share one grid (shape and
    affine); they are stacked channels-first.

    Raises
    ------
    ReadError, GeometryError
        An input is missing, unreadable or holds several series; channels on
        different grids.
    """
    from napari_medattn.io import Volume, read_volume

    volumes = [read_volume(path, modality=modality) for path in case.inputs]
    files = {f.resolve() for path in case.inputs
             for f in ([path] if path.is_file() else path.iterdir())}
    if len(volumes) == 1:
        return volumes[0], case.inputs[0], files
    first = volumes[0]
    for path, other in zip(case.inputs[1:], volumes[1:]):
        if other.data.ndim != 3 or other.spatial_shape != first.spatial_shape \
                or not np.allclose(other.affine, first.affine, atol=1e-4):
            raise GeometryError(f"The channel {path.name} of case {case.case_id} is not on "
                                f"the grid of {case.inputs[0].name}.")
    if first.data.ndim != 3:
        raise DimensionError(f"Case {case.case_id} has several channel files; each must be "
                             f"3D.")
    data = np.stack([np.asarray(v.data) for v in volumes])
    meta = {**first.meta, "frame_axis": "channel"}
    return Volume(data, first.affine.copy(), first.modality, meta), case.inputs[0], files


def label_figures(labels, reference=None, *, classes: Sequence[int] | None = None,
                  class_names: dict[int, str] | None = None) -> dict[str, Any]:
    """Per-class figures of a label map: ``volume_ml_<class>`` and, with a reference on
    the same grid, ``dice_<class>`` and ``hd95_mm_<class>`` (mm).

    Parameters
    ----------
    labels, reference : Volume
        Label maps; the reference must share the labels' grid.
    classes : sequence of int, optional
        The labels to report (default: every named class and every label present).
    class_names : dict of int to str, optional
        Names by label (default: the label map's own class names, else ``class <n>``).
    """
    from napari_medattn.metrics import evaluate_pair
    from napari_medattn.metrics.statistics import class_statistics

    rows = class_statistics(labels, class_names=class_names or None)
    if classes is not None:
        rows = [row for row in rows if row["label"] in set(classes)]
    names = {row["label"]: _column_name(row["name"]) for row in rows}
    # An absent class has 0 mL (class_statistics leaves its numbers NaN).
    figures: dict[str, Any] = {f"volume_ml_{names[row['label']]}":
                               row["volume_ml"] if row["voxels"] else 0.0 for row in rows}
    if reference is not None:
        chosen = list(classes) if classes is not None else sorted(names)
        scores = evaluate_pair(labels, reference, classes=chosen,
                               class_names={k: names.get(k, f"class_{k}") for k in chosen},
                               case="case")
        for score in scores:
            name = names.get(score.label, _column_name(score.name))
            figures[f"dice_{name}"] = score.dice
            figures[f"hd95_mm_{name}"] = score.hd95_mm
    return _json_numbers(figures)


def _flat_numbers(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """``{"dice": {"wm": 0.9}, "folding_percent": 0.1}`` -> ``{"qa_dice_wm": 0.9,
    "qa_folding_percent": 0.1}``: the numbers of a nested record as table columns."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}_{_column_name(str(key))}"
        if isinstance(value, dict):
            flat.update(_flat_numbers(name, value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def _json_numbers(figures: dict[str, Any]) -> dict[str, Any]:
    """NaN (a ratio with nothing to divide by) as None, so the records stay plain JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in figures.items()}


def _column_name(name: str) -> str:
    """``"grey matter"`` -> ``"grey_matter"``: a class name as part of a column name."""
    from napari_medattn.cli.common import safe_name

    return safe_name(name).lower() or "class"
