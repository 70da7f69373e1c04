"""``medattn models``: list the built-in and user models with their cards.

Also home of the rule that picks the model ``medattn segment`` runs when none is named
(:func:`default_model`): the built-in model called :data:`DEFAULT_MODEL`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from napari_medattn.errors import ModelError

#: The built-in model run when the user names none (the 3D DSSA-UNet brain tissue model
#: that ``scripts/train_builtin_models.py`` trains). A constant rather than a flag in the
#: cards, so two cards can never both claim to be the default.
DEFAULT_MODEL = "dssa-unet-brain-tissue"
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
    from napari_medattn.models.registry import list_models, user_model_folders

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


def default_model():
    """The :class:`~.registry.ModelEntry` to run when the user names no model.

    Raises
    ------
    ModelError
        The default built-in model is not installed (one sentence naming what is).
    """
    from napari_medattn.models.registry import builtin_models, list_models

    for entry in builtin_models():
        if entry.name == DEFAULT_MODEL:
            return entry
    installed = ", ".join(e.name for e in list_models(problems=[])) or "none"
    raise ModelError(f"The default model {DEFAULT_MODEL!r} is not installed; name a model "
                     f"with --model NAME or PATH (installed: {installed}).")
