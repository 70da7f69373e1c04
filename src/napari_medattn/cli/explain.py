"""``medattn explain``: explanation maps of a model on NIfTI files and DICOM series.

For every volume in the inputs (found as ``medattn segment`` finds them) and every
``--method``, :func:`napari_medattn.explain.explain` runs and each map is written into
``--out`` on the source's exact grid as ``<name>_<method>_<layer>[_<class>].nii.gz``, with
``<name>_provenance.json`` beside them (the one provenance record of
:mod:`napari_medattn.io.provenance`; ``details.maps`` has each map's layer, class, channel
weights and faithfulness numbers). With ``--format dicom`` (DICOM scans only) each map is
instead a Parametric Map ``<...>.dcm`` plus a derived image series ``<...>_derived/`` for
viewers that do not read Parametric Maps (:mod:`napari_medattn.io.dicom.pmap`). A bad
input gets one sentence on stderr, the others still run, and the exit code is 1 at the end.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from napari_medattn.cli.common import (
    ProgressBar,
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

#: Methods whose maps are the model's own attention weights (Parametric Maps labelled ATTN;
#: the others are explanations, EXPL).
ATTENTION_METHODS = ("gate", "cbam", "dssa")
#: Method names, kept here so that ``medattn --help`` does not import torch; a test checks
#: they equal :data:`napari_medattn.explain.METHODS`.
METHOD_NAMES = ("gradcam", "gradcam++", "hirescam", "layercam", "gate", "cbam", "channels",
                "dssa", "rollout", "occlusion")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn explain INPUT... --out DIR [options]``."""
    parser = subparsers.add_parser(
        "explain",
        help="explanation maps (Grad-CAM family, attention gates, rollout, occlusion) as "
             "NIfTI on the source grid",
        description="Explain a model's prediction on every volume in the inputs (NIfTI "
                    "files; DICOM files, folders and DICOMDIRs) with one or more methods. "
                    "Writes each map as <name>_<method>_<layer>[_<class>].nii.gz on the "
                    "source's exact grid and <name>_provenance.json into --out. Inputs that "
                    "cannot be read or explained are reported on stderr, the others still "
                    "run, and the exit code is then 1.",
    )
    add_inputs(parser, out_help="folder for the maps (created if missing)")
    add_model(parser)
    parser.add_argument("--method", nargs="+", choices=METHOD_NAMES, default=["gradcam"],
                        metavar="METHOD",
                        help=f"one or more of {', '.join(METHOD_NAMES)} (default: gradcam); "
                             f"put this option after the inputs")
    parser.add_argument("--class", dest="target", metavar="CLASS",
                        help="class explained, by index or name (default: the first "
                             "foreground class)")
    parser.add_argument("--region", metavar="LABELS",
                        help="label image on the input's grid (NIfTI); the class-activation "
                             "maps, occlusion and rollout explain the target inside its "
                             "non-zero voxels only")
    parser.add_argument("--layer", metavar="PATH",
                        help="module path of the layer (default: the method's default; all "
                             "levels for gate, cbam, channels and dssa)")
    add_device(parser)
    parser.add_argument("--format", choices=("nifti", "dicom"), default="nifti",
                        help="maps as NIfTI, or (DICOM scans only) as DICOM Parametric Maps "
                             "<...>.dcm plus derived image series <...>_derived/ that every "
                             "viewer opens (default: nifti)")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also compute deletion and insertion areas, stability and the "
                             "verdict for each map (about 6x slower: the map again on a noisy "
                             "image and nine forward passes per window)")
    parser.set_defaults(func=prepared_batch("explain", prepare_explain))


def prepare_explain(args: argparse.Namespace, *, memory=None
                    ) -> tuple[Callable[[VolumeOutput], list[str]], dict]:
    """Load the model and check the request once: ``(one_volume, parameters)``, the
    function that explains one volume and the parameters its record starts with (a cohort
    run calls it once per worker, with the worker's ``memory``, a
    :class:`~napari_medattn.inference.window_options.MemoryBudget`, and ``one_volume``
    once per case)."""
    # Imported here so that ``medattn --help`` does not pay for torch.
    import numpy as np

    from napari_medattn.explain.dispatch import check_request
    from napari_medattn.inference.devices import resolve_device
    from napari_medattn.io import read_volume

    module, card = load_model_argument(args.model)
    target = None
    if args.target is not None:
        chosen = class_indices(args.target, card.class_names, option="--class")
        if len(chosen) != 1:
            raise ModelError("--class names one class, by index or name.")
        target = chosen[0]
    region = None
    if args.region is not None:
        labels = read_volume(args.region)
        region = np.asarray(labels.data if labels.data.ndim == 3 else labels.data[0]) != 0
    methods = list(dict.fromkeys(args.method))
    for method in methods:  # refuse what cannot run before reading anything
        check_request(module, card, method, args.layer, target)
    parameters = {"methods": methods, "target": target, "layer": args.layer,
                  "region": args.region, "device": args.device,
                  "faithfulness": args.faithfulness, "format": args.format}

    device = str(resolve_device(args.device).device)

    def one_volume(item: VolumeOutput) -> list[str]:
        item.record.set_model(card)
        # The explanation methods compute in float32 on the device the request resolves to.
        item.record.device, item.record.precision = device, "float32"
        written = explain_volume(item, module, card, methods, args, target, region,
                                 memory=memory)
        return [", ".join(p.name for p in written)]

    return one_volume, parameters


def explain_volume(item: VolumeOutput, module, card, methods: list[str],
                   args: argparse.Namespace, target: int | None, region, *,
                   memory=None) -> list[Path]:
    """Run every method on one volume; write the maps and list them in the record.

    ``region`` is a boolean mask on the volume's grid (``--region``) or None; ``memory``
    the MemoryBudget to plan against (None: the free memory). Returns the paths of the
    maps written.
    """
    from napari_medattn.explain import explain
    from napari_medattn.inference.window_options import MemoryBudget
    from napari_medattn.io.dicom.source import require_dicom_source

    if args.format == "dicom":  # refused before any map is computed
        require_dicom_source(item.volume, "a DICOM Parametric Map")
    maps = []
    for method in methods:
        with ProgressBar(f"{item.volume.name} {method}") as bar:
            maps += explain(item.volume, module, card, method, target_class=target,
                            region=region, layer=args.layer, device=args.device,
                            faithfulness=args.faithfulness, memory=memory or MemoryBudget(),
                            progress=bar.update)
    written, records = [], []
    for map_ in maps:
        parts = [map_.method, map_.layer or ""]
        if map_.target is not None:
            parts.append(card.class_names[map_.target])
        kind = "_".join(p for p in parts if p).replace("+", "pp")
        if args.format == "dicom":
            path = _write_dicom_map(item, kind, map_.volume, "attention"
                                    if map_.method in ATTENTION_METHODS else "explanation")
        else:
            path = item.write_nifti(kind, map_.volume)
        written.append(path)
        records.append({
            "file": path.name, "name": map_.volume.name, "method": map_.method,
            "layer": map_.layer, "target": map_.target,
            "target_name": None if map_.target is None else card.class_names[map_.target],
            "channel_weights": map_.channel_weights,
            "faithfulness": None if map_.faithfulness is None else map_.faithfulness.to_dict(),
        })
    item.record.details["maps"] = records
    return written


def _write_dicom_map(item: VolumeOutput, kind: str, volume, map_kind: str) -> Path:
    """A map as ``<stem>_<kind>.dcm`` (Parametric Map of ``map_kind``, see
    :data:`napari_medattn.io.dicom.pmap.KINDS`) and ``<stem>_<kind>_derived/``."""
    from napari_medattn.errors import MedAttnError
    from napari_medattn.io.dicom.pmap import write_derived_series, write_parametric_map

    kind = safe_name(kind)
    path = write_parametric_map(item.path(kind, ".dcm"), volume, map_kind,
                                description=volume.name)
    try:
        derived = write_derived_series(item.path(f"{kind}_derived", ""), volume, map_kind,
                                       description=f"{volume.name} (derived)")
    except MedAttnError:
        path.unlink(missing_ok=True)  # the map goes out as both or not at all
        raise
    item.record.outputs[kind] = path.name
    item.record.outputs[f"{kind}_derived"] = derived[0].parent.name
    return path
