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
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from napari_medattn.errors import MedAttnError, ModelError, ReadError, WriteError

#: What ``--probabilities all`` asks for.
ALL_CLASSES = "all"
UNCERTAINTY_AUTO = "auto"
_AUTOCAST = {"auto": None, "on": True, "off": False}


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
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps "
                             "(default: auto)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average over flips of every axis")
    parser.add_argument("--uncertainty", nargs="?", const=UNCERTAINTY_AUTO,
                        choices=(UNCERTAINTY_AUTO, "entropy", "variance"),
                        help="write an uncertainty map in [0, 1]: predictive entropy, or "
                             "variance across the TTA flips (needs --tta); without a value: "
                             "variance with --tta, else entropy")
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
                        help="reduced-precision forward pass: auto (GPU only), on (also on "
                             "CPUs with native bfloat16; faster, not bitwise float32), off")
    parser.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    """Segment every input; 0 when all succeeded, 1 when any input failed."""
    # Imported here so that ``medattn --help`` does not pay for torch.
    from napari_medattn.inference.sliding_window import attention_map_names
    from napari_medattn.models.registry import load_model

    from napari_medattn.cli.models import default_model

    config = _parse_config(args.config)
    if args.model is None:
        if args.architecture or config:
            raise ModelError("--architecture and --config describe a weights file given "
                             "with --model PATH.")
        module, card = load_model(default_model().path)
    else:
        module, card = load_model(args.model, architecture=args.architecture, config=config)
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
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"Cannot create the output folder {out_dir}: "
                         f"{error.strerror}.") from None

    inputs = [Path(p) for p in args.inputs]
    namer = OutputNamer(out_dir, inputs)
    status = 0
    for label, volumes in iter_inputs(inputs, out_dir, modality=args.modality):
        if isinstance(volumes, MedAttnError):
            print(f"medattn segment: {volumes}", file=sys.stderr)
            status = 1
            continue
        for volume in volumes:
            try:
                written = segment_volume(volume, module, card, namer, options,
                                         input_path=label)
            except MedAttnError as error:
                print(f"medattn segment: {label} ({volume.name}): {error}", file=sys.stderr)
                status = 1
                continue
            print(f"{label} ({volume.name}) -> {written}")
    return status


def segment_volume(volume, module, card, namer: OutputNamer, options: dict[str, Any], *,
                   input_path: Path) -> Path:
    """Segment one volume and write its outputs and provenance; returns the labels file.

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
    """
    from napari_medattn.inference import segment
    from napari_medattn.io import write_nifti
    from napari_medattn.metrics.report import _atomic_write

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
    record["total_runtime_s"] = time.perf_counter() - started
    provenance = namer.path(stem, "provenance", suffix=".json")
    _atomic_write(provenance, lambda f: json.dump(record, f, indent=2, default=_json_default))
    return outputs["labels"]


def iter_inputs(inputs: Sequence[Path], out_dir: Path, *, modality: str | None = None
                ) -> Iterator[tuple[Path, list | MedAttnError]]:
    """``(input, volumes)`` for every input, or ``(input, error)`` when it cannot be read.

    A folder yields each NIfTI file in it (recursively, sorted) and, when it holds DICOM
    files, its DICOM series; files under ``out_dir`` (earlier results) are left out.
    Volumes are read one input at a time, so only one input's images are in memory.
    """
    from napari_medattn.io import read
    from napari_medattn.io.dicom import _walk
    from napari_medattn.io.nifti import is_nifti

    out_resolved = out_dir.resolve()
    for path in inputs:
        if not path.is_dir():
            yield path, _read_or_error(read, path, modality)
            continue
        niftis = sorted(p for p in path.rglob("*") if p.is_file() and is_nifti(p)
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)
                        and out_resolved not in p.resolve().parents)
        dicom_candidates, _ = _walk(path)
        if not niftis and not dicom_candidates:
            yield path, ReadError(f"{path} holds no NIfTI or DICOM files.")
            continue
        for nifti in niftis:
            yield nifti, _read_or_error(read, nifti, modality)
        if dicom_candidates:
            yield path, _read_or_error(read, path, modality)


def _read_or_error(read, path: Path, modality: str | None) -> list | MedAttnError:
    try:
        return read(path, modality=modality)
    except MedAttnError as error:
        return error


class OutputNamer:
    """Unique output names within a run that never name an input file.

    Parameters
    ----------
    out_dir : Path
        Where the outputs go.
    inputs : sequence of Path
        The inputs given on the command line: no output may resolve to a file in them.
    """

    def __init__(self, out_dir: Path, inputs: Sequence[Path]) -> None:
        self.out_dir = out_dir
        self._taken: set[str] = set()
        self._inputs = {p.resolve() for p in inputs if p.is_file()}
        for folder in (p for p in inputs if p.is_dir()):
            self._inputs.update(f.resolve() for f in folder.rglob("*") if f.is_file())

    def path(self, stem: str, kind: str, suffix: str = ".nii.gz") -> Path:
        """The output file for ``kind`` (``"labels"``, ``"provenance"``, ...) of ``stem``."""
        return self.out_dir / f"{stem}_{kind}{suffix}"

    def claim(self, volume) -> str:
        """A stem for ``volume``'s outputs, unused in this run and naming no input."""
        base = _safe_name(volume.name) or "volume"
        stem, number = base, 1
        while stem in self._taken or self._names_an_input(stem):
            number += 1
            stem = f"{base}_{number}"
        self._taken.add(stem)
        return stem

    def _names_an_input(self, stem: str) -> bool:
        # Any file starting with the stem and an underscore could be one of its outputs.
        prefix = f"{stem}_"
        return any(p.parent == self.out_dir.resolve() and p.name.startswith(prefix)
                   for p in self._inputs)


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
