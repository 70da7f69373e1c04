"""``medattn detect``: lesion boxes in patient mm for each scan, as CSV and JSON.

Mirrors the Detect widget: the detector runs as :func:`napari_medattn.detection.detect`
does for the widget, and every box at or above ``--threshold`` is written as a row of
``<scan>_detections.csv`` (centre in LPS mm, size in mm, score, class) and in full in
``<scan>_detections.json`` (with the box axes), beside the provenance record. A scan
without any box is a result: its CSV holds only the header and the command says so.

Where detections carry instance masks, ``--format nifti`` (the default) writes them as
``<scan>_detections_masks.nii.gz`` (label ``n``: the ``n``-th detection with a mask). With
``--format dicom-seg`` on a DICOM scan, a TID 1500 SR ``<scan>_detections_sr.dcm`` holds
each box (edge lengths, score; placed by its centre on the nearest image, or by its
segment) and the masks go to a DICOM-SEG ``<scan>_detections_seg.dcm`` the SR references
(:func:`napari_medattn.io.dicom.sr.write_detection_report`).
"""

from __future__ import annotations

import argparse

from napari_medattn.cli.common import (
    AUTOCAST,
    VolumeOutput,
    add_device,
    add_inputs,
    prepared_batch,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect", help="detect lesions: 3D boxes in patient mm with scores (CSV + JSON)",
        description="Detect lesions in each scan with a MedFormer detector and write the "
                    "boxes (centre and size in patient mm, LPS; score; class) as CSV and "
                    "JSON, with a provenance record.")
    add_inputs(parser)
    parser.add_argument("--model", metavar="NAME|PATH",
                        help="detector name from `medattn models` or a model folder "
                             "(default: the built-in medformer-lesion-detector)")
    parser.add_argument("--threshold", type=float, default=0.3,
                        help="lowest score of a box written, 0-1 (default: 0.3)")
    parser.add_argument("--tta", action="store_true",
                        help="average over the 8 flips of the axes (8x slower)")
    add_device(parser, precision=True)
    parser.add_argument("--format", choices=("nifti", "dicom-seg"), default="nifti",
                        help="besides CSV and JSON: instance masks as NIfTI, or (DICOM scans "
                             "only) a DICOM SR <name>_detections_sr.dcm with each box's "
                             "centre, edge lengths and score, and the masks as a DICOM-SEG "
                             "<name>_detections_seg.dcm it references (default: nifti)")
    parser.set_defaults(func=prepared_batch("detect", prepare_detect))


def prepare_detect(args: argparse.Namespace, *, memory=None):
    """Load the detector and check the options once: ``(one_volume, parameters)``, the
    function that detects on one volume and the parameters its record starts with (a
    cohort run calls it once per worker, with the worker's ``memory``, a
    :class:`~napari_medattn.inference.window_options.MemoryBudget`, and ``one_volume``
    once per case)."""
    import napari_medattn
    from napari_medattn.cli.common import ProgressBar, load_model_argument
    from napari_medattn.detection.detector import DEFAULT_DETECTOR, check_detector, detect
    from napari_medattn.detection.export import write_detections_csv, write_detections_json
    from napari_medattn.errors import DimensionError
    from napari_medattn.inference.window_options import MemoryBudget
    from napari_medattn.io.dicom.source import require_dicom_source
    from napari_medattn.io.dicom.sr import detection_masks, write_detection_report

    if not 0.0 <= args.threshold <= 1.0:
        raise DimensionError(f"--threshold must be between 0 and 1, not {args.threshold}.")
    model, card = load_model_argument(args.model or DEFAULT_DETECTOR)
    check_detector(card)

    def one_volume(item: VolumeOutput) -> list[str]:
        if args.format == "dicom-seg":  # refused before the detector runs
            require_dicom_source(item.volume, "a DICOM SR of detections")
        with ProgressBar(item.volume.name) as bar:
            result = detect(item.volume, model, card, device=args.device, tta=args.tta,
                            min_score=args.threshold, use_autocast=AUTOCAST[args.autocast],
                            memory=memory or MemoryBudget(), progress=bar.update)
        facts = result.provenance
        record = item.record
        record.set_model(card)
        record.device, record.precision = facts["device"], facts["precision"]
        record.details.update(detections=len(result.detections), windows=facts["windows"],
                              detection_runtime_s=facts["runtime_s"])
        record.notes.extend(facts["notes"])
        csv_path = write_detections_csv(item.path("detections", ".csv"), result.detections)
        record.outputs["detections_csv"] = csv_path.name
        json_path = write_detections_json(item.path("detections", ".json"), result.detections,
                                          {"model": card.name, "threshold": args.threshold})
        record.outputs["detections_json"] = json_path.name
        count = len(result.detections)
        first = (f"{count} lesion box(es) scoring {args.threshold:g} or more: {csv_path}"
                 if count else f"no lesion scored {args.threshold:g} or more: {csv_path}")
        return [first, str(json_path), *write_formatted(item, result.detections)]

    def write_formatted(item: VolumeOutput, detections: list) -> list[str]:
        """The masks (NIfTI) or the SR and SEG (DICOM) of ``--format``; their paths."""
        if args.format == "nifti":
            masks = detection_masks(item.volume, detections)
            return [] if masks is None else [str(item.write_nifti("detections_masks", masks))]
        paths = {kind: item.path(kind, ".dcm") for kind in ("detections_seg", "detections_sr")}
        written = write_detection_report(
            paths["detections_sr"], paths["detections_seg"], item.volume, detections,
            algorithm={"name": card.name, "version": napari_medattn.__version__})
        if not written:
            item.record.notes.append("No DICOM SR written: there is no detection to report.")
        item.record.outputs.update({kind: path.name for kind, path in paths.items()
                                    if path in written})
        return [str(path) for path in written]

    return one_volume, {"model": args.model, "threshold": args.threshold, "tta": args.tta,
                        "device": args.device, "autocast": args.autocast,
                        "format": args.format}
