"""``medattn segment``: segment NIfTI files and DICOM series in a batch, results as NIfTI.

For every volume found in the inputs (a NIfTI file; every series of a DICOM file, folder
or DICOMDIR; the NIfTI files and DICOM series of a folder) the model runs through
:func:`napari_medattn.inference.segment` and the results are written into ``--out`` on the
source's exact grid:

* ``<name>_labels.nii.gz``: class index per voxel;
* ``<name>_probability_<class>_<class name>.nii.gz`` per class asked for with
  ``--probabilities``; ``<name>_uncertainty.nii.gz``; ``<name>_attention_<map>.nii.gz``;
* ``<name>_provenance.json``: the model and its weights' SHA-256, the card, the device,
  the parameters, the runtime, the package version, the input and the files written.

``<name>`` is the NIfTI file name without its suffix, or the DICOM series name (e.g.
``T1_sag_MR_4``), made unique within the run (``_2``, ``_3``, ... are appended) and never
naming an input file. A bad input gets one sentence on stderr, the others still run, and
the exit code is 1 at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_medattn.errors import MedAttnError, ModelError, ReadError, WriteError

#: What ``--probabilities all`` asks for.
ALL_CLASSES = "all"
#: Kind of the json record written beside each volume's outputs.
PROVENANCE = "provenance"
UNCERTAINTY_AUTO = "auto"
_AUTOCAST = {"auto": True, "off": False}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn segment INPUT... --out DIR [options]``."""
    parser = subparsers.add_parser(
        "segment",
        help="segment NIfTI files and DICOM series with a model; NIfTI label maps out",
        description="Segment every volume in the inputs (NIfTI files; DICOM files, folders "
                    "and DICOMDIRs, each series on its own; folders are searched for both) "
                    "with a model (default: the built-in default model, see `medattn "
                    "models`). Writes <name>_labels.nii.gz on the source's exact grid, the "
                    "optional probability, uncertainty and attention maps, and "
                    "<name>_provenance.json into --out. Inputs that cannot be read or "
                    "segmented are reported on stderr, the others still run, and the exit "
                    "code is then 1. Inputs are never overwritten.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="NIfTI file, DICOM file, DICOMDIR or folder")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the results (created if missing)")
    parser.add_argument("--model", metavar="NAME|PATH",
                        help="model name from `medattn models`, a model folder, a weights "
                             "file (.safetensors/.pt) or a MONAI bundle (default: the "
                             "built-in default model)")
    parser.add_argument("--architecture", metavar="NAME",
                        help="architecture of a bare weights file, e.g. unet, dssa_unet or "
                             "monai:UNet")
    parser.add_argument("--config", metavar="JSON",
                        help="architecture arguments of a bare weights file as a JSON "
                             "object, e.g. '{\"out_channels\": 4, \"patch_size\": 64}'")
    parser.add_argument("--patch-size", type=int, nargs="+", metavar="N",
                        help="window size in voxels for a bare weights file whose config "
                             "does not say it (one number per spatial axis)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps "
                             "(default: auto)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average over flips of every axis")
    parser.add_argument("--uncertainty", nargs="?", const=UNCERTAINTY_AUTO,
                        choices=(UNCERTAINTY_AUTO, "entropy", "variance"),
                        help="write an uncertainty map in [0, 1]: predictive entropy, or "
                             "variance across the TTA flips (needs --tta); without a value: "
                             "variance with --tta, else entropy (put this option after the "
                             "inputs or give its value)")
    parser.add_argument("--attention", nargs="*", metavar="MAP",
                        help="write the model's spatial attention maps (all of them, or "
                             "the named ones); put this option after the inputs")
    parser.add_argument("--probabilities", metavar="CLASSES",
                        help="write the probability maps of these classes: comma-separated "
                             "indices or names, or 'all'")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="fraction of a window shared with its neighbours, in [0, 1) "
                             "(default: 0.5)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="windows per forward pass (reduced if memory is short; "
                             "default: 4)")
    parser.add_argument("--crop-to-body", action="store_true",
                        help="run only inside the bounding box of the body")
    parser.add_argument("--min-component-mm3", type=float, metavar="MM3",
                        help="remove connected pieces of a class smaller than this volume")
    parser.add_argument("--modality",
                        help="override the inputs' modality (e.g. CT for a NIfTI that does "
                             "not say)")
    parser.add_argument("--autocast", choices=tuple(_AUTOCAST), default="auto",
                        help="reduced-precision forward pass: auto (on GPUs and on CPUs that "
                             "compute bfloat16 natively; faster, not bitwise float32; the "
                             "provenance records the precision used), off (float32)")
    parser.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    """Segment every input; 0 when all succeeded, 1 when any input failed."""
    # Imported here so that ``medattn --help`` does not pay for torch.
    from napari_medattn.inference.sliding_window import attention_map_names
    from napari_medattn.models.registry import default_model, load_model

    config = _parse_config(args.config)
    if args.model is None:
        if args.architecture or config or args.patch_size:
            raise ModelError("--architecture, --config and --patch-size describe a weights "
                             "file given with --model PATH.")
        module, card = load_model(default_model().path)
    else:
        module, card = load_model(args.model, architecture=args.architecture, config=config,
                                  card=bare_weights_card(args, config))
    options = {
        "device": args.device,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "tta": args.tta,
        "uncertainty": ("variance" if args.tta else "entropy")
        if args.uncertainty == UNCERTAINTY_AUTO else args.uncertainty,
        "keep_probabilities": probability_classes(args.probabilities, card.class_names),
        "attention_maps": (),
        "crop_to_body": args.crop_to_body,
        "min_component_mm3": args.min_component_mm3,
        "use_autocast": _AUTOCAST[args.autocast],
    }
    if args.attention is not None:
        options["attention_maps"] = tuple(args.attention) or tuple(
            attention_map_names(module, card.patch_size, card.in_channels))
        if not options["attention_maps"]:
            raise ModelError(f"Model {card.name!r} records no spatial attention maps; "
                             f"leave out --attention.")
    def one_volume(volume, namer: OutputNamer, input_path: Path) -> list[str]:
        written, notes = segment_volume(volume, module, card, namer, options,
                                        input_path=input_path)
        return [str(written), *(f"  note: {note}" for note in notes)]

    return run_over_inputs("segment", args.inputs, Path(args.out), args.modality, one_volume)


def run_over_inputs(command: str, inputs: Sequence[str], out_dir: Path, modality: str | None,
                    one_volume: Callable[[Any, OutputNamer, Path], list[str]]) -> int:
    """The batch loop every file-to-files subcommand shares; returns the exit status.

    Creates ``out_dir``, reads every volume of the inputs (:func:`collect_inputs`), calls
    ``one_volume(volume, namer, input_path)`` for each and prints ``input (name) ->`` its
    first returned line, then the others. A bad input or a volume whose processing fails
    gets one sentence on stderr (``medattn COMMAND: ...``); the others still run, and the
    status is then 1.
    """
    from napari_medattn.io import read

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"Cannot create the output folder {out_dir}: "
                         f"{error.strerror}.") from None
    jobs = collect_inputs([Path(p) for p in inputs])
    namer = OutputNamer(out_dir, {f for job in jobs for f in job.files})
    status = 0
    for job in jobs:
        try:
            if job.error is not None:
                raise job.error
            volumes = read(job.path, modality=modality)
        except MedAttnError as error:
            print(f"medattn {command}: {error}", file=sys.stderr)
            status = 1
            continue
        for volume in volumes:
            try:
                first, *more = one_volume(volume, namer, job.path)
            except MedAttnError as error:
                print(f"medattn {command}: {job.path} ({volume.name}): {error}",
                      file=sys.stderr)
                status = 1
                continue
            print(f"{job.path} ({volume.name}) -> {first}")
            for line in more:
                print(line)
    return status


def segment_volume(volume, module, card, namer: OutputNamer, options: dict[str, Any], *,
                   input_path: Path) -> tuple[Path, list[str]]:
    """Segment one volume and write its outputs and provenance.

    Parameters
    ----------
    volume : Volume
        The image, as read.
    module, card
        The network and its model card.
    namer : OutputNamer
        Gives each volume its unique output name.
    options : dict
        Keyword arguments of :func:`napari_medattn.inference.segment`.
    input_path : Path
        The input the volume came from, for the provenance record.

    Returns
    -------
    labels : Path
        The label map written.
    notes : list of str
        Sentences for the user: the reader's warnings and the pipeline's notes (device
        fallback, a modality the model was not made for, ...), also in the provenance.
    """
    from napari_medattn.inference import segment
    from napari_medattn.io import write_nifti
    from napari_medattn.metrics.report import write_text_atomically

    started = time.perf_counter()
    with _ProgressBar(volume.name) as bar:
        result = segment(volume, module, card, progress=bar.update, **options)
    stem = namer.claim(volume)
    outputs = {"labels": write_nifti(namer.path(stem, "labels"), result.labels)}
    for c, probability in result.probabilities.items():
        key = f"probability_{c}_{_safe_name(card.class_names[c])}"
        outputs[key] = write_nifti(namer.path(stem, key), probability)
    if result.uncertainty is not None:
        outputs["uncertainty"] = write_nifti(namer.path(stem, "uncertainty"),
                                             result.uncertainty)
    for name, attention in result.attention.items():
        key = f"attention_{_safe_name(name)}"
        outputs[key] = write_nifti(namer.path(stem, key), attention)
    record = dict(result.provenance)
    record["input"] = {
        "path": str(input_path),
        "source": volume.meta.get("source"),
        "name": volume.name,
        "series_uid": volume.meta.get("series_uid"),
        "modality": volume.modality,
        "shape": list(volume.spatial_shape),
        "affine_lps": volume.affine.tolist(),
    }
    record["outputs"] = {key: path.name for key, path in outputs.items()}
    record["input_warnings"] = list(volume.meta.get("warnings", []))
    record["total_runtime_s"] = time.perf_counter() - started
    provenance = namer.path(stem, PROVENANCE, suffix=".json")
    write_text_atomically(provenance, lambda f: json.dump(record, f, indent=2, default=_json_default))
    return outputs["labels"], record["input_warnings"] + result.notes


@dataclasses.dataclass(frozen=True)
class InputJob:
    """One path to read: a NIfTI file, a DICOM file or DICOMDIR, or a folder's DICOM series.

    ``files`` are the image files it covers (never to be overwritten); ``error`` is set
    when the input was found to be unusable before reading.
    """

    path: Path
    files: frozenset[Path]
    error: MedAttnError | None = None


def collect_inputs(inputs: Sequence[Path]) -> list[InputJob]:
    """The reads that the command-line inputs stand for, in order.

    A file is read as it is. A folder stands for each NIfTI file in it (recursively,
    sorted) and, when it holds DICOM files, for its DICOM series (read together, so that
    each series is one volume). Results of earlier runs (files a ``*_provenance.json``
    beside them lists as outputs) are left out, so ``--out`` may lie inside an input
    folder or be the folder itself.
    """
    # The DICOM reader's own notion of candidates, so both agree on what a series is.
    from napari_medattn.io.dicom import find_dicom_files
    from napari_medattn.io.nifti import is_nifti

    jobs = []
    for path in inputs:
        if not path.is_dir():
            jobs.append(InputJob(path, frozenset({path.resolve()}) if path.is_file()
                                 else frozenset()))
            continue
        earlier = _earlier_outputs(path)
        niftis = sorted(p for p in path.rglob("*") if p.is_file() and is_nifti(p)
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)
                        and p.resolve() not in earlier)
        dicom = [file for file, _ in find_dicom_files(path)[0]]
        if not niftis and not dicom:
            jobs.append(InputJob(path, frozenset(),
                                 ReadError(f"{path} holds no NIfTI or DICOM files.")))
            continue
        jobs += [InputJob(p, frozenset({p.resolve()})) for p in niftis]
        if dicom:
            jobs.append(InputJob(path, frozenset(p.resolve() for p in dicom)))
    return jobs


def _earlier_outputs(folder: Path) -> set[Path]:
    """Files under ``folder`` that provenance records of earlier runs list as outputs."""
    found = set()
    for record in folder.rglob(f"*_{PROVENANCE}.json"):
        try:
            outputs = json.loads(record.read_text(encoding="utf-8")).get("outputs", {})
        except (OSError, ValueError, AttributeError):
            continue  # not one of ours: its neighbours are treated as inputs
        if isinstance(outputs, dict):
            found.update((record.parent / str(name)).resolve() for name in outputs.values())
    return found


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

    def claim(self, volume) -> str:
        """A stem for ``volume``'s outputs, unused in this run and naming no input."""
        base = _safe_name(volume.name) or "volume"
        stem, number = base, 1
        while stem in self._taken or any(name.startswith(f"{stem}_")
                                         for name in self._protected_names):
            # Any file starting with the stem and an underscore could be one of its outputs.
            number += 1
            stem = f"{base}_{number}"
        self._taken.add(stem)
        return stem


def bare_weights_card(args: argparse.Namespace, config: dict):
    """A card for ``--model FILE --architecture A --patch-size ...`` (None without
    ``--patch-size``: the registry then uses a card beside the file or the config).

    Classes are named ``class 1``, ``class 2``, ... after the config's ``out_channels``;
    the intensities are used as they are (no normalisation is known).
    """
    if not args.patch_size:
        return None
    from napari_medattn.models.card import ModelCard, default_classes

    if args.architecture is None:
        raise ModelError("--patch-size is for a bare weights file; give its --architecture "
                         "too.")
    classes = config.get("out_channels")
    if not isinstance(classes, int) or classes < 1:
        raise ModelError("--config must give the number of classes as out_channels.")
    return ModelCard(
        name=Path(args.model).stem, architecture=args.architecture, config=config,
        classes=default_classes(["background"] + [f"class {i}" for i in range(1, classes)]),
        patch_size=tuple(args.patch_size), in_channels=int(config.get("in_channels", 1)),
        training_procedure=f"Unknown: a bare weights file loaded from {args.model}.")


def probability_classes(spec: str | None, class_names: Sequence[str]) -> tuple[int, ...]:
    """Class indices from ``--probabilities`` (indices or names, comma-separated, or "all").

    Raises
    ------
    ModelError
        A name or index the model does not have.
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
            raise ModelError(f"--probabilities names {item!r}, which is not a class of the "
                             f"model ({known}).")
        if index not in chosen:
            chosen.append(index)
    return tuple(chosen)


def _parse_config(text: str | None) -> dict:
    if text is None:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"--config is not valid JSON ({error.msg} at character "
                         f"{error.pos}).") from None
    if not isinstance(config, dict):
        raise ModelError("--config must be a JSON object of architecture arguments.")
    return config


def _safe_name(text: str) -> str:
    """``"T1 sag MR #4"`` -> ``"T1_sag_MR_4"``: a file-name-safe stem."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.")


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, paths and tuples in the provenance record."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class _ProgressBar:
    """A tqdm bar over the windows of one volume (shown only on a terminal)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar = None

    def update(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.name, unit="window", file=sys.stderr,
                            disable=None, leave=False)
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
