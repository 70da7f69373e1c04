"""``medattn models``: list the built-in and user models with their cards (the default one,
:data:`napari_medattn.models.registry.DEFAULT_MODEL`, marked)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


#: Column where the values of a model's description start (after two spaces).
FIELD_WIDTH = 16


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn models [--json]``."""
    parser = subparsers.add_parser(
        "models",
        help="list the built-in and user models with their model cards",
        description="List every model `medattn segment --model NAME` can run: the "
                    "built-in models shipped with the package, then user models (the "
                    "per-user model folder and the folders of MEDATTN_MODEL_PATH), each "
                    "with its card: architecture, task, classes, modality, spacing, "
                    "window (patch) size, training data, measured metrics, licence and "
                    "where it lives. Model folders whose card is broken are reported on "
                    "stderr and the others are still listed.",
    )
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document (a list of models with their full "
                             "cards) instead of the text listing")
    parser.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    """Print the models; 1 if a model folder could not be listed, else 0."""
    from napari_medattn.models.registry import DEFAULT_MODEL, list_models, user_model_folders

    problems: list[str] = []
    entries = list_models(problems=problems)
    if args.json:
        document = [{"name": e.name, "source": e.source, "path": str(e.path),
                     "default": e.source == "builtin" and e.name == DEFAULT_MODEL,
                     "card": e.card.to_dict()} for e in entries]
        print(json.dumps(document, indent=2))
    elif not entries:
        folders = ", ".join(str(f) for f in user_model_folders())
        print(f"No models are installed (built-in weights are missing and there are no "
              f"user models in {folders}).")
    else:
        print("\n\n".join(describe_model(e) for e in entries))
    for problem in problems:
        print(f"medattn models: {problem}", file=sys.stderr)
    return 1 if problems else 0


def describe_model(entry: Any) -> str:
    """A human-readable block describing one :class:`~.registry.ModelEntry` and its card."""
    card = entry.card
    from napari_medattn.models.registry import DEFAULT_MODEL  # torch-free --help

    default = " (default)" if entry.source == "builtin" and entry.name == DEFAULT_MODEL else ""
    spacing = ("native" if card.spacing is None
               else " x ".join(f"{s:g}" for s in card.spacing) + " mm")
    scheme = dict(card.normalization)
    normalization = scheme.pop("scheme") + "".join(f", {k}={v}" for k, v in scheme.items())
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in card.metrics.items()) or "none reported"
    fields = [
        ("location", str(entry.path)),
        ("architecture", f"{card.architecture} {json.dumps(card.config, sort_keys=True)}"),
        ("task", card.task),
        ("classes", ", ".join(f"{i} {c.name} ({c.color})" for i, c in enumerate(card.classes))),
        ("modality", card.modality),
        ("input channels", str(card.in_channels)),
        ("spacing", spacing),
        ("orientation", card.orientation or "as stored"),
        ("patch size", f"{' x '.join(str(p) for p in card.patch_size)} voxels"),
        ("normalisation", normalization),
        ("training data", card.training_data),
        ("training", card.training_procedure),
        ("metrics", metrics),
        ("evaluated on", card.evaluated_on),
        ("licence", card.license),
        ("intended use", card.intended_use),
        ("weights sha256", card.weights_sha256 or "not recorded"),
    ]
    lines = [f"{card.name}{default}  [{entry.source}]"]
    lines += [f"  {label:<{FIELD_WIDTH}}{value}" for label, value in fields]
    return "\n".join(lines)
