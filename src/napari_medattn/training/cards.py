"""The model card a training run writes: what was trained, how, and how well it scored.

:func:`~napari_medattn.training.loop.train` builds the card once before the first epoch
(:func:`card_for_run`) and adds each epoch's validation figures to it
(:func:`card_with_metrics`); fine-tuning copies the start weights in with
:func:`initialise_from` and names them in the card.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models.card import NOT_CLINICAL, ModelCard, default_classes
from napari_medattn.training.config import TrainingConfig, describe
from napari_medattn.training.datasets import Case


def class_list(classes: Sequence[Any]) -> list[Any]:
    """Names get the default palette; other entries are checked by the card itself."""
    if len(classes) < 2:
        raise ModelError("Training needs at least two classes (background and one more).")
    if all(isinstance(c, str) for c in classes):
        return default_classes(list(classes))
    return list(classes)


def card_for_run(run: TrainingConfig, settings: dict, precision: str, classes: list[Any],
                 out_dir: Path, fields: Mapping[str, Any] | None) -> ModelCard:
    """The card of a run before any epoch: its net, grid, classes and procedure.

    ``settings`` are the run's :meth:`~.config.TrainingConfig.settings`; the procedure
    sentence is written from them (:func:`~.config.describe`) so that it cannot disagree
    with the run. ``fields`` may set the descriptive fields (name, training data, ...).
    """
    fields = dict(fields or {})
    allowed = {"name", "training_data", "training_procedure", "evaluated_on", "license",
               "intended_use", "task"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ModelError(f"Card field(s) {', '.join(unknown)} cannot be set here; allowed: "
                         f"{', '.join(sorted(allowed))}.")
    procedure = describe(settings, precision)
    if fields.get("training_procedure"):
        procedure = f"{fields['training_procedure']} {procedure}"
    config = settings["config"]
    return ModelCard(
        name=fields.get("name") or out_dir.resolve().name,
        task=fields.get("task", "segmentation"),
        architecture=run.architecture, config=config, classes=classes,
        patch_size=run.patch_size, modality=run.modality, spacing=settings["spacing"],
        orientation=run.orientation, normalization=settings["normalization"],
        in_channels=config["in_channels"],
        training_data=fields.get("training_data", "unknown"),
        training_procedure=procedure,
        evaluated_on=fields.get("evaluated_on", "not evaluated"),
        license=fields.get("license", "unknown"),
        intended_use=fields.get("intended_use", f"Research and teaching. {NOT_CLINICAL}"),
    )


def card_with_metrics(card: ModelCard, history: list[dict], val_cases: Sequence[Case],
                      epochs: int) -> ModelCard:
    """The card of the latest epoch, with its measured validation figures."""
    entry = history[-1]
    renamed = {"val_dice": "dice_mean", "val_hd95_mm": "hd95_mm_mean"}
    metrics = {renamed.get(k, k[len("val_"):]): float(v) for k, v in entry.items()
               if k.startswith("val_") and math.isfinite(float(v))}
    metrics["epoch"] = entry["epoch"]
    metrics["train_loss"] = entry["loss"]
    evaluated_on = card.evaluated_on
    if val_cases and evaluated_on == "not evaluated":
        names = ", ".join(c.name for c in val_cases)
        evaluated_on = (f"{len(val_cases)} held-out case(s) ({names}), "
                        f"segmented with napari_medattn.inference.segment as this card "
                        f"prescribes (float32, overlap 0.5) and scored on their own grids "
                        f"by napari_medattn.metrics.evaluate_pair.")
    procedure = card.training_procedure + f" Weights of epoch {entry['epoch']} of {epochs}."
    return dataclasses.replace(card, metrics=metrics, evaluated_on=evaluated_on,
                               training_procedure=procedure)


def initialise_from(model: nn.Module, architecture: str, config: dict,
                    source: str | os.PathLike) -> dict[str, str]:
    """Copy the weights of model ``source`` into ``model``; its name and weights hash."""
    from napari_medattn.models.registry import load_model

    trained, card = load_model(source)
    if card.architecture != architecture or json.loads(json.dumps(trained.config)) != config:
        raise ModelError(f"The model {card.name!r} is a {card.architecture} with another "
                         f"configuration; fine-tune it with its own architecture and config "
                         f"(its card lists them).")
    model.load_state_dict(trained.state_dict())
    return {"name": card.name, "sha256": str(card.weights_sha256)}
