"""The layer every file-to-files ``medattn`` subcommand is built on.

One place for the arguments they share (inputs, ``--out``, ``--model``, ``--device``,
``--autocast``, ``--modality``), the batch loop over the inputs (files, folders and DICOM
series, expanded by :func:`napari_medattn.io.folders.expand` exactly as napari's reader
does), output naming (:class:`OutputNamer`), the progress bar, turning a library error into
one sentence on stderr while the batch goes on, and the one provenance record
(:class:`~napari_medattn.io.provenance.Provenance`) written beside each volume's outputs.

A new subcommand is a module of this package with ``register(subparsers)`` and its name in
:data:`napari_medattn.cli.COMMANDS`; it adds the shared arguments, then its own, and runs
one function per volume::

    def register(subparsers):
        parser = subparsers.add_parser("smooth", help="...", description="...")
        add_inputs(parser)                      # INPUT..., --out, --modality
        add_device(parser)
        parser.add_argument("--sigma-mm", type=float, default=1.0)
        parser.set_defaults(func=run_smooth)

    def run_smooth(args):
        def one_volume(item: VolumeOutput) -> list[str]:
            smoothed = smooth(item.volume, args.sigma_mm)       # the library call
            return [str(item.write_nifti("smoothed", smoothed))]

        return run_over_inputs("smooth", args, one_volume,
                               parameters={"sigma_mm": args.sigma_mm})

``run_over_inputs`` creates ``--out``, reads each input, gives ``one_volume`` a
:class:`VolumeOutput` (the volume, the input path, a unique output stem and the provenance
record to fill in: ``item.record.device``, ``.model``, ``.details``, ``.notes``), prints
``input (name) -> first line`` and the others, writes ``<stem>_provenance.json`` after the
outputs, and returns the exit status (1 when any input failed). Heavy imports (torch, the
readers) stay inside functions so that ``medattn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_medattn.errors import MedAttnError, ModelError, WriteError

#: ``--autocast`` choice -> ``use_autocast`` argument of the inference functions.
AUTOCAST = {"auto": True, "off": False}
#: What ``--probabilities all`` (or any class list option) asks for.
ALL_CLASSES = "all"


def add_inputs(parser: argparse.ArgumentParser, *, out_help: str = "folder for the results "
               "(created if missing)") -> None:
    """Add ``INPUT...`` (files, folders, DICOMDIRs), ``--out DIR`` and ``--modality``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="NIfTI file, DICOM file, DICOMDIR or folder (its NIfTI files "
                             "and DICOM series, searched recursively)")
    parser.add_argument("--out", required=True, metavar="DIR", help=out_help)
    parser.add_argument("--modality",
                        help="override the inputs' modality (e.g. CT for a NIfTI that does "
                             "not say)")


def add_model(parser: argparse.ArgumentParser, *, required: bool = False,
              what: str = "model name from `medattn models` or a model folder") -> None:
    """Add ``--model NAME|PATH`` (default: the built-in default model unless required)."""
    default = "" if required else " (default: the built-in default model)"
    parser.add_argument("--model", metavar="NAME|PATH", required=required,
                        help=f"{what}{default}")


def add_device(parser: argparse.ArgumentParser, *, precision: bool = False) -> None:
    """Add ``--device`` and, with ``precision``, ``--autocast`` (see :data:`AUTOCAST`)."""
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps "
                             "(default: auto)")
    if precision:
        parser.add_argument("--autocast", choices=tuple(AUTOCAST), default="auto",
                            help="reduced-precision forward pass: auto (on GPUs and on CPUs "
                                 "that compute bfloat16 natively; faster, not bitwise "
                                 "float32; the provenance records the precision used), off "
                                 "(float32)")


def load_model_argument(name_or_path: str | None, **options: Any):
    """``(module, card)`` for ``--model`` (None: the built-in default model).

    ``options`` go to :func:`napari_medattn.models.registry.load_model`.
    """
    from napari_medattn.models.registry import default_model, load_model

    if name_or_path is None:
        return load_model(default_model().path, **options)
    return load_model(name_or_path, **options)


def class_indices(spec: str | None, class_names: Sequence[str], *,
                  option: str = "--probabilities") -> tuple[int, ...]:
    """Class indices from an option's value (indices or names, comma-separated, or "all").

    Raises
    ------
    ModelError
        A name or index the model does not have (the sentence names ``option``).
    """
    if spec is None:
        return ()
    if spec.strip().lower() == ALL_CLASSES:
        return tuple(range(len(class_names)))
    lowered = [name.lower() for name in class_names]
    chosen: list[int] = []
    for item in (part.strip() for part in spec.split(",")):
        if item.isdigit() and int(item) < len(class_names):
            index = int(item)
        elif item.lower() in lowered:
            index = lowered.index(item.lower())
        else:
            known = ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
            raise ModelError(f"{option} names {item!r}, which is not a class of the model "
                             f"({known}).")
        if index not in chosen:
            chosen.append(index)
    return tuple(chosen)


def safe_name(text: str) -> str:
    """``"T1 sag MR #4"`` -> ``"T1_sag_MR_4"``: a file-name-safe stem."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.")


class OutputNamer:
    """Unique output names within a run that never name an input file.

    Parameters
    ----------
    out_dir : Path
        Where the outputs go.
    protected : set of Path
        Resolved paths of the input files, which no output may be written over.
    """

    def __init__(self, out_dir: Path, protected: set[Path]) -> None:
        self.out_dir = out_dir
        self._taken: set[str] = set()
        resolved = out_dir.resolve()
        # Only inputs inside the output folder can clash with an output name.
        self._protected_names = {p.name for p in protected if p.parent == resolved}

    def path(self, stem: str, kind: str, suffix: str = ".nii.gz") -> Path:
        """The output file for ``kind`` (``"labels"``, ``"provenance"``, ...) of ``stem``."""
        return self.out_dir / f"{stem}_{kind}{suffix}"

    def claim(self, name: str) -> str:
        """A stem for the outputs of the volume called ``name``, unused in this run and
        naming no input."""
        base = safe_name(name) or "volume"
        stem, number = base, 1
        while stem in self._taken or any(other.startswith(f"{stem}_")
                                         for other in self._protected_names):
            # Any file starting with the stem and an underscore could be one of its outputs.
            number += 1
            stem = f"{base}_{number}"
        self._taken.add(stem)
        return stem


@dataclasses.dataclass
class VolumeOutput:
    """One volume of a batch: what a subcommand's ``one_volume`` gets.

    Attributes
    ----------
    volume : Volume
        The image, as read.
    input_path : Path
        The input it came from.
    record : Provenance
        Its provenance record, with the input and the command's parameters already in;
        fill in the model, device, precision, details and notes.
    """

    volume: Any
    input_path: Path
    record: Any
    namer: OutputNamer
    _stem: str | None = None

    def path(self, kind: str, suffix: str = ".nii.gz") -> Path:
        """The output file ``<stem>_<kind><suffix>``; the stem is claimed on first use."""
        if self._stem is None:
            self._stem = self.namer.claim(self.volume.name)
        return self.namer.path(self._stem, kind, suffix)

    def write_nifti(self, kind: str, volume: Any) -> Path:
        """Write ``volume`` as ``<stem>_<kind>.nii.gz`` and list it in the record."""
        from napari_medattn.io import write_nifti

        path = write_nifti(self.path(safe_name(kind)), volume)
        self.record.outputs[safe_name(kind)] = path.name
        return path

    def write_record(self) -> Path:
        """Write ``<stem>_provenance.json`` (after the outputs, so it lists only real files)."""
        from napari_medattn.io.provenance import PROVENANCE

        return self.record.write(self.path(PROVENANCE, ".json"))


def prepared_batch(command: str, prepare: Callable[[argparse.Namespace], tuple[
        Callable[[VolumeOutput], list[str]], dict]]) -> Callable[[argparse.Namespace], int]:
    """The ``func`` of a subcommand whose ``prepare(args)`` loads and checks once and returns
    ``(one_volume, parameters)``; it runs :func:`run_over_inputs` with them (a cohort run
    calls the same ``prepare`` once per worker)."""

    def run(args: argparse.Namespace) -> int:
        one_volume, parameters = prepare(args)
        return run_over_inputs(command, args, one_volume, parameters=parameters)

    return run


def run_over_inputs(command: str, args: argparse.Namespace,
                    one_volume: Callable[[VolumeOutput], list[str]], *,
                    parameters: dict[str, Any] | None = None) -> int:
    """The batch loop every file-to-files subcommand shares; returns the exit status.

    Parameters
    ----------
    command : str
        The subcommand's name, for messages and the provenance record.
    args : argparse.Namespace
        With ``inputs``, ``out`` and ``modality`` (see :func:`add_inputs`).
    one_volume : callable
        ``one_volume(item) -> lines``: processes ``item.volume``, writes its outputs
        through ``item`` and returns the lines to print (the first goes after
        ``input (name) ->``).
    parameters : dict, optional
        The options recorded in every provenance record.

    Notes
    -----
    A bad input or a volume whose processing raises a library error gets one sentence
    on stderr (``medattn COMMAND: ...``); the others still run, and the status is then 1.
    The record's notes (reader warnings and the command's own) are printed as
    ``  note: ...`` lines.
    """
    from napari_medattn.io.folders import expand
    from napari_medattn.io.provenance import Provenance
    from napari_medattn.io.reader import read_job

    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"Cannot create the output folder {out_dir}: "
                         f"{error.strerror}.") from None
    jobs = expand(args.inputs, skip_earlier_outputs=True)
    namer = OutputNamer(out_dir, {f for job in jobs for f in job.files})
    status = 0
    for job in jobs:
        try:
            volumes = read_job(job, modality=args.modality)
        except MedAttnError as error:
            print(f"medattn {command}: {error}", file=sys.stderr)
            status = 1
            continue
        for volume in volumes:
            item = VolumeOutput(volume, job.path, Provenance(command, dict(parameters or {})),
                                namer)
            item.record.add_input(job.path, volume)
            try:
                first, *more = one_volume(item)
                item.write_record()
            except MedAttnError as error:
                print(f"medattn {command}: {job.path} ({volume.name}): {error}",
                      file=sys.stderr)
                status = 1
                continue
            print(f"{job.path} ({volume.name}) -> {first}")
            for line in [*more, *(f"  note: {note}" for note in item.record.notes)]:
                print(line)
    return status


class ProgressBar:
    """A tqdm bar over a job's units of work, shown only on a terminal.

    Use as a context manager and pass :meth:`update` as the library's ``progress``
    callback (``progress(done, total)``).
    """

    def __init__(self, name: str, unit: str = "window") -> None:
        self.name = name
        self.unit = unit
        self.bar = None

    def update(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.name, unit=self.unit, file=sys.stderr,
                            disable=None, leave=False)
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
