"""``medattn segment --model dmaf-brain-tumour --modality t1=A t1ce=B t2=C flair=D --out DIR``:
one case from any subset of a multimodal model's modalities.

``--modality NAME=PATH`` followed by more ``NAME=PATH`` pairs switches ``medattn segment``
to multimodal mode (a plain ``--modality MR`` still overrides the inputs' modality). The
scans are read, brought onto the reference scan's grid (``--reference``, default the first
given in the model's order) through their exact affines and segmented by
:func:`napari_medattn.inference.multimodal.segment_multimodal`. Written into ``--out``:

* ``<name>_labels.nii.gz``: BraTS labels (1 necrotic core, 2 oedema, 4 enhancing tumour) on
  the reference scan's exact grid;
* ``<name>_attention_<modality>.nii.gz`` per given modality with ``--attention``;
* ``<name>_provenance.json``: the one provenance record, with every input and its SHA-256,
  the WT/TC/ET volumes in mL and each modality's weight in ``details``.

Bad input (no modality, one given twice, the same scan twice, scans that do not overlap in
patient space, a modality the model does not know, an unreadable file) gets one sentence
and nothing is written.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from napari_medattn.errors import DimensionError, ModelError, ReadError, WriteError

#: The model multimodal mode uses when ``--model`` is not given.
DEFAULT_MULTIMODAL_MODEL = "dmaf-brain-tumour"
#: Options of single-scan segmentation that multimodal mode does not offer.
SINGLE_SCAN_ONLY = ("architecture", "config", "patch_size", "tta", "uncertainty",
                    "probabilities", "crop_to_body", "min_component_mm3")


def extend_parser(parser: argparse.ArgumentParser) -> None:
    """Let ``medattn segment`` take ``--modality NAME=PATH NAME=PATH ...`` without INPUTs,
    and add ``--reference``."""
    for action in parser._actions:
        if action.dest == "inputs":  # INPUTs become optional: multimodal mode has none
            action.nargs, action.required = "*", False
        if action.dest == "modality":
            action.help = ("override the inputs' modality (e.g. CT for a NIfTI that does not "
                           "say); or, for a multimodal model, the scans as NAME=PATH pairs: "
                           "--modality t1=A t1ce=B t2=C flair=D (any subset)")
    parser.add_argument("--reference", metavar="NAME",
                        help="multimodal mode: the modality whose grid the labels are on "
                             "(default: the first given, in the model's order)")


def dispatch(single: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.Namespace], int]:
    """``medattn segment``'s ``func``: multimodal mode when ``--modality`` is a NAME=PATH
    pair, else ``single`` (the batch of single scans)."""

    def run(args: argparse.Namespace) -> int:
        if args.modality is not None and "=" in args.modality:
            return run_multimodal(args)
        if args.reference is not None:
            raise ModelError("--reference is for several modalities given as "
                             "--modality NAME=PATH ...")
        if not args.inputs:
            raise ReadError("Give at least one INPUT to segment, or the scans of a multimodal "
                            "model as --modality NAME=PATH ...")
        return single(args)

    return run


def modality_paths(pairs: list[str]) -> dict[str, Path]:
    """``["t1=a.nii", "FLAIR=b.nii"]`` as ``{"t1": Path("a.nii"), "flair": ...}``."""
    named: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path:
            raise ReadError(f"Give every scan of a multimodal model as NAME=PATH (e.g. "
                            f"t1ce=scan.nii.gz); {pair!r} is not.")
        key = name.strip().lower()
        if key in named:
            raise DimensionError(f"The modality {key!r} was given twice.")
        named[key] = Path(path)
    return named


def run_multimodal(args: argparse.Namespace) -> int:
    """Segment one multimodal case; returns the exit status (0)."""
    from napari_medattn.cli.common import (
        AUTOCAST,
        OutputNamer,
        ProgressBar,
        VolumeOutput,
        load_model_argument,
    )
    from napari_medattn.inference.multimodal import segment_multimodal
    from napari_medattn.inference.window_options import WindowOptions
    from napari_medattn.io.provenance import Provenance
    from napari_medattn.io.reader import read_volume

    given = [name for name in SINGLE_SCAN_ONLY if getattr(args, name, None) not in (None, False)]
    if given or args.format != "nifti":
        options = ", ".join("--" + n.replace("_", "-") for n in given) or "--format dicom-seg"
        raise ModelError(f"{options} cannot be used with several modalities.")
    record = Provenance("segment")  # started now: its runtime covers reading and segmenting
    paths = modality_paths([args.modality, *args.inputs])
    module, card = load_model_argument(args.model or DEFAULT_MULTIMODAL_MODEL)
    known = card.config.get("modalities") or ()
    unknown = [name for name in paths if name not in known]
    if unknown:  # before reading any file: the cheapest sentence first
        raise ModelError(f"The model {card.name!r} does not know the modality "
                         f"{unknown[0]!r}; it takes {', '.join(known) or 'one scan only'}.")
    volumes = {name: read_volume(path) for name, path in paths.items()}
    reference = args.reference.lower() if args.reference else None
    with ProgressBar("multimodal case") as bar:
        result = segment_multimodal(
            volumes, module, card, reference=reference, attention=args.attention is not None,
            device=args.device, windows=WindowOptions(overlap=args.overlap,
                                                      batch_size=args.batch_size),
            use_autocast=AUTOCAST[args.autocast], progress=bar.update)
    # Only now, with the result in hand, is anything written.
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"Cannot create the output folder {out_dir}: "
                         f"{error.strerror}.") from None
    namer = OutputNamer(out_dir, {p.resolve() for p in paths.values()})
    record.parameters.update(modalities={k: str(v) for k, v in paths.items()},
                             reference=result.reference)
    item = VolumeOutput(volumes[result.reference], paths[result.reference], record, namer)
    for name, path in paths.items():
        record.add_input(path, volumes[name])
    labels = item.write_nifti("labels", result.labels)
    for name, attention in result.attention.items():
        item.write_nifti(f"attention_{name}", attention)
    facts = result.provenance
    record.set_model(card)
    record.device, record.precision = facts["device"], facts["precision"]
    record.parameters.update(facts["parameters"])
    record.details.update(volumes_ml=result.volumes_ml,
                          modality_weights=result.modality_weights,
                          label_values={str(k): v for k, v in
                                        result.labels.meta["labels"].items()},
                          windows=facts["windows"], segment_runtime_s=facts["runtime_s"])
    record.notes += facts["notes"]
    item.write_record()
    print(f"{', '.join(f'{k}={v}' for k, v in paths.items())} -> {labels}")
    print("  " + ", ".join(f"{k} {v:.1f} mL" for k, v in result.volumes_ml.items()))
    if result.modality_weights:
        print("  weights: " + ", ".join(f"{k} {v:.2f}"
                                        for k, v in result.modality_weights.items()))
    return 0
