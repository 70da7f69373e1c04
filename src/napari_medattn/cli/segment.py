"""``medattn segment``: segment NIfTI files and DICOM series in a batch, results as NIfTI.

For every volume found in the inputs (a NIfTI file; every series of a DICOM file, folder
or DICOMDIR; the NIfTI files and DICOM series of a folder) the model runs through
:func:`napari_medattn.inference.segment` and the results are written into ``--out`` on the
source's exact grid:

* ``<name>_labels.nii.gz``: class index per voxel (with ``--format dicom-seg``:
  ``<name>_labels.dcm``, a DICOM-SEG referencing the source series, and
  ``<name>_measurements.dcm``, its TID 1500 SR of per-class volumes and lesions);
* ``<name>_probability_<class>_<class name>.nii.gz`` per class asked for with
  ``--probabilities``; ``<name>_uncertainty.nii.gz``; ``<name>_attention_<map>.nii.gz``;
* ``<name>_provenance.json``: the one provenance record
  (:mod:`napari_medattn.io.provenance`): the input and its SHA-256, the model, its
  weights' SHA-256 and card, the device and precision, the parameters, the runtime, the
  package version and the files written; ``details`` has the windows run.

``<name>`` is the NIfTI file name without its suffix, or the DICOM series name (e.g.
``T1_sag_MR_4``), made unique within the run (``_2``, ``_3``, ... are appended) and never
naming an input file. A bad input gets one sentence on stderr, the others still run, and
the exit code is 1 at the end.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from napari_medattn.cli import segment_multimodal
from napari_medattn.cli.common import (
    AUTOCAST,
    VolumeOutput,
    add_device,
    add_inputs,
    add_model,
    class_indices,
    load_model_argument,
    prepared_batch,
    safe_name,
)
from napari_medattn.errors import ModelError

UNCERTAINTY_AUTO = "auto"


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
    add_inputs(parser)
    add_model(parser, what="model name from `medattn models`, a model folder, a weights file "
                           "(.safetensors/.pt) or a MONAI bundle")
    parser.add_argument("--architecture", metavar="NAME",
                        help="architecture of a bare weights file, e.g. unet, dssa_unet or "
                             "monai:UNet")
    parser.add_argument("--config", metavar="JSON",
                        help="architecture arguments of a bare weights file as a JSON "
                             "object, e.g. '{\"out_channels\": 4, \"patch_size\": 64}'")
    parser.add_argument("--patch-size", type=int, nargs="+", metavar="N",
                        help="window size in voxels for a bare weights file whose config "
                             "does not say it (one number per spatial axis)")
    add_device(parser, precision=True)
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
    parser.add_argument("--format", choices=("nifti", "dicom-seg"), default="nifti",
                        help="label map as NIfTI, or as a DICOM-SEG (<name>_labels.dcm) "
                             "referencing a DICOM source series plus a DICOM SR "
                             "(<name>_measurements.dcm: per-class volumes, each lesion's "
                             "volume, longest axial diameter and centre, each referencing "
                             "its segment or the images) (default: nifti)")
    segment_multimodal.extend_parser(parser)  # --modality t1=A t1ce=B ...: one multimodal case
    parser.set_defaults(func=segment_multimodal.dispatch(prepared_batch("segment",
                                                                        prepare_segment)))


def prepare_segment(args: argparse.Namespace, *, memory=None
                    ) -> tuple[Callable[[VolumeOutput], list[str]], dict]:
    """Load the model and check the options once: ``(one_volume, parameters)``, the
    function that segments one volume and the parameters its record starts with (a cohort
    run calls it once per worker, with the worker's ``memory``, a
    :class:`~napari_medattn.inference.window_options.MemoryBudget`, and ``one_volume``
    once per case)."""
    # Imported here so that ``medattn --help`` does not pay for torch.
    from napari_medattn.inference.sliding_window import attention_map_names
    from napari_medattn.inference.window_options import (
        MemoryBudget,
        OutputRequest,
        WindowOptions,
    )

    config = _parse_config(args.config)
    if args.model is None and (args.architecture or config or args.patch_size):
        raise ModelError("--architecture, --config and --patch-size describe a weights "
                         "file given with --model PATH.")
    if args.model is None:
        module, card = load_model_argument(None)
    else:
        module, card = load_model_argument(args.model, architecture=args.architecture,
                                           config=config, card=bare_weights_card(args, config))
    attention_maps: tuple[str, ...] = ()
    if args.attention is not None:
        attention_maps = tuple(args.attention) or tuple(
            attention_map_names(module, card.patch_size, card.in_channels))
        if not attention_maps:
            raise ModelError(f"Model {card.name!r} records no spatial attention maps; "
                             f"leave out --attention.")
    options = {
        "device": args.device,
        "windows": WindowOptions(overlap=args.overlap, batch_size=args.batch_size),
        "outputs": OutputRequest(
            keep_probabilities=class_indices(args.probabilities, card.class_names),
            tta=args.tta, attention_maps=attention_maps,
            uncertainty=("variance" if args.tta else "entropy")
            if args.uncertainty == UNCERTAINTY_AUTO else args.uncertainty),
        "crop_to_body": args.crop_to_body,
        "min_component_mm3": args.min_component_mm3,
        "use_autocast": AUTOCAST[args.autocast],
        "memory": memory or MemoryBudget(),
    }

    def one_volume(item: VolumeOutput) -> list[str]:
        return [str(segment_volume(item, module, card, options, label_format=args.format))]

    return one_volume, {}


def segment_volume(item: VolumeOutput, module, card, options: dict, *,
                   label_format: str = "nifti") -> Path:
    """Segment one volume, write its outputs and fill in its provenance record.

    Parameters
    ----------
    item : VolumeOutput
        The volume, its output naming and its record.
    module, card
        The network and its model card.
    options : dict
        Keyword arguments of :func:`napari_medattn.inference.segment`.
    label_format : {"nifti", "dicom-seg"}
        How the label map is written (a DICOM-SEG needs a DICOM source series).

    Returns
    -------
    Path
        The label map written. The pipeline's notes (device fallback, a modality the
        model was not made for, ...) go into the record's notes.
    """
    from napari_medattn.cli.common import ProgressBar
    from napari_medattn.inference import segment
    from napari_medattn.io.dicom.source import require_dicom_source

    if label_format == "dicom-seg":  # refused before the model runs
        require_dicom_source(item.volume)
    with ProgressBar(item.volume.name) as bar:
        result = segment(item.volume, module, card, progress=bar.update, **options)
    if label_format == "dicom-seg":
        from napari_medattn.io.dicom.sr import write_seg_with_report

        labels, report = write_seg_with_report(
            item.path("labels", ".dcm"), item.path("measurements", ".dcm"), result.labels,
            classes=card.classes, algorithm={
                "name": card.name, "version": result.provenance["package_version"],
                "weights_sha256": card.weights_sha256})
        item.record.outputs.update(labels=labels.name, measurements=report.name)
    else:
        labels = item.write_nifti("labels", result.labels)
    for c, probability in result.probabilities.items():
        item.write_nifti(f"probability_{c}_{safe_name(card.class_names[c])}", probability)
    if result.uncertainty is not None:
        item.write_nifti("uncertainty", result.uncertainty)
    for name, attention in result.attention.items():
        item.write_nifti(f"attention_{safe_name(name)}", attention)
    facts = result.provenance
    record = item.record
    record.set_model(card)
    record.device, record.precision = facts["device"], facts["precision"]
    record.parameters.update(facts["parameters"])
    record.details.update(windows=facts["windows"], windows_predicted=facts["windows_predicted"],
                          segment_runtime_s=facts["runtime_s"])
    record.notes += facts["notes"]
    return labels


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
