"""``medattn classify``: one probability per scan, and on request its heat map as NIfTI.

Mirrors the Classify row of the Detect widget: :func:`napari_medattn.classification.classify`
gives each scan's class probabilities, written as ``<scan>_classification.json`` (every
class) beside the provenance record, and one row per scan of ``classification.csv`` in
``--out`` (the batch's table, written again after each scan, atomically). With
``--heatmap gradcam`` or ``--heatmap routing`` the map of
:func:`napari_medattn.classification.heat_map` is written as
``<scan>_heatmap_<kind>.nii.gz`` on the scan's exact grid.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from napari_medattn.cli.common import (
    ProgressBar,
    VolumeOutput,
    add_device,
    add_inputs,
    load_model_argument,
    prepared_batch,
)

#: Heat-map kinds, kept here so that ``medattn --help`` does not import torch; a test checks
#: they equal :data:`napari_medattn.classification.HEATMAPS`.
HEATMAP_NAMES = ("gradcam", "routing")
#: The batch's table in ``--out``.
TABLE = "classification.csv"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn classify INPUT... --out DIR [options]``."""
    parser = subparsers.add_parser(
        "classify", help="classify scans: one probability per scan (CSV + JSON), heat maps "
                         "on request",
        description="Classify each scan with a MedFormer classifier and write its class "
                    "probabilities (<name>_classification.json, and one row per scan in "
                    f"{TABLE}) with a provenance record; with --heatmap, also where the "
                    "classifier looked, as <name>_heatmap_<kind>.nii.gz on the scan's grid.")
    add_inputs(parser)
    parser.add_argument("--model", metavar="NAME|PATH",
                        help="classifier name from `medattn models` or a model folder "
                             "(default: the built-in medformer-lesion-classifier)")
    parser.add_argument("--heatmap", choices=HEATMAP_NAMES,
                        help="also write a heat map: gradcam (Grad-CAM of the positive "
                             "class) or routing (DSSA's region routing)")
    add_device(parser)
    parser.set_defaults(func=prepared_batch("classify", prepare_classify))


def prepare_classify(args: argparse.Namespace) -> tuple[Callable[[VolumeOutput], list[str]],
                                                         dict]:
    """Load the classifier once: ``(one_volume, parameters)`` (see
    :func:`~napari_medattn.cli.common.prepared_batch`)."""
    from pathlib import Path

    from napari_medattn.classification import (
        DEFAULT_CLASSIFIER,
        check_classifier,
        classify,
        heat_map,
    )
    from napari_medattn.metrics.report import write_csv

    model, card = load_model_argument(args.model or DEFAULT_CLASSIFIER)
    check_classifier(card)
    names = card.class_names
    columns = ["input", "name", "probability", "predicted", *[f"p_{n}" for n in names]]
    rows: list[dict] = []

    def one_volume(item: VolumeOutput) -> list[str]:
        result = classify(item.volume, model, card, device=args.device)
        facts = result.provenance
        record = item.record
        record.set_model(card)
        record.device, record.precision = facts["device"], facts["precision"]
        probabilities = {n: float(p) for n, p in zip(names, result.probabilities)}
        record.details.update(probabilities=probabilities, predicted=result.predicted,
                              classification_runtime_s=facts["runtime_s"])
        record.notes.extend(facts["notes"])
        json_path = item.path("classification", ".json")
        _write_json(json_path, {"model": card.name, "probability": result.probability,
                                "positive_class": names[1], "predicted": result.predicted,
                                "probabilities": probabilities})
        record.outputs["classification_json"] = json_path.name
        lines = [f"p({names[1]}) = {result.probability:.3f}: {json_path}"]
        if args.heatmap:
            with ProgressBar(f"{item.volume.name} {args.heatmap}") as bar:
                found = heat_map(item.volume, model, card, args.heatmap, device=args.device,
                                 progress=bar.update)
            path = item.write_nifti(f"heatmap_{args.heatmap}", found.volume)
            record.details["heatmap"] = {"kind": args.heatmap, "method": found.method,
                                         "layer": found.layer, "target": found.target}
            lines.append(str(path))
        rows.append({"input": str(item.input_path), "name": item.volume.name,
                     "probability": round(result.probability, 6),
                     "predicted": result.predicted,
                     **{f"p_{n}": round(p, 6) for n, p in probabilities.items()}})
        write_csv(Path(args.out) / TABLE, columns, rows)
        return lines

    return one_volume, {"model": args.model, "heatmap": args.heatmap, "device": args.device}


def _write_json(path, document: dict) -> None:
    import json

    from napari_medattn.io.atomic import write_text_atomically

    write_text_atomically(path, lambda f: json.dump(document, f, indent=2))
