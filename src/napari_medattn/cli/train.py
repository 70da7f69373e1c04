"""``medattn train``: train a library network on a dataset folder or CSV."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_medattn.errors import ModelError

#: Default intensity normalisation per modality of the data.
_NORMALIZATION = {"CT": {"scheme": "ct_window", "window": [-1000.0, 1000.0]}}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a network on an MSD/nnU-Net folder or a CSV of image and label paths",
        description="Patch-based training with Dice + cross-entropy, AdamW and a cosine "
                    "schedule; validation Dice every epoch on held-out whole cases; best/ "
                    "and last/ model folders (weights + model card), history.json and "
                    "curves.png in --out. The saved models load with 'medattn' and in "
                    "napari like any other.",
    )
    parser.add_argument("--data", required=True, metavar="DIR_OR_CSV",
                        help="dataset folder (dataset.json, imagesTr/, labelsTr/) or CSV")
    parser.add_argument("--model", required=True, metavar="NAME",
                        help="architecture, e.g. unet, dssa_unet, medformer, unetr")
    parser.add_argument("--config", default=None, metavar="JSON",
                        help="architecture arguments as JSON text or a .json file")
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder")
    parser.add_argument("--init", default=None, metavar="MODEL",
                        help="fine-tune: start from this model's weights (a name from "
                             "'medattn models', a model folder or a weights file); --config "
                             "defaults to its card's")
    parser.add_argument("--name", default=None, help="model name (default: the --out name)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch-size", type=int, nargs=3, default=(64, 64, 64),
                        metavar=("D", "H", "W"), help="patch in voxels (default 64 64 64)")
    parser.add_argument("--spacing", type=float, nargs=3, default=None,
                        metavar=("SD", "SH", "SW"),
                        help="voxel size in mm to train at (default: the median spacing)")
    parser.add_argument("--normalization", default=None, metavar="JSON",
                        help='intensity normalisation (default {"scheme": "zscore"}; CT: '
                             'a -1000..1000 HU window)')
    parser.add_argument("--augment", default="default", metavar="JSON|default|none",
                        help="augmentation config (default: the nnU-Net-like pipeline)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument("--validation-fraction", type=float, default=0.2,
                        help="fraction of cases held out for validation (default 0.2)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="patch loader processes")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out after its last finished epoch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_train)


def _json_argument(text: str | None, what: str) -> Any:
    """Parse JSON given inline or as a path to a .json file."""
    if text is None:
        return None
    if text.strip().endswith(".json") and Path(text).is_file():
        text = Path(text).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"The {what} is not valid JSON ({error.msg}).") from None


def run_train(args: argparse.Namespace) -> int:
    """Load and split the dataset, train, and print where the models are; 0 on success."""
    import numpy as np  # heavy imports here keep ``medattn --help`` fast

    from napari_medattn.models import architectures
    from napari_medattn.training.augment import DEFAULT_AUGMENTATION
    from napari_medattn.training.datasets import load_cases
    from napari_medattn.training.config import TrainingConfig
    from napari_medattn.training.loop import train

    if args.model not in architectures():  # before reading a possibly large dataset
        raise ModelError(f"Unknown architecture {args.model!r}; valid choices are "
                         f"{', '.join(architectures())}.")
    config = _json_argument(args.config, "--config")
    if config is None and args.init is not None:
        from napari_medattn.models.registry import load_model

        config = load_model(args.init)[1].config
    config = config or {}
    if not isinstance(config, dict):
        raise ModelError("--config must be a JSON object of architecture arguments.")
    augment = {"default": DEFAULT_AUGMENTATION, "none": None}.get(args.augment, args.augment)
    if isinstance(augment, str):
        augment = _json_argument(augment, "--augment")
    data = load_cases(args.data)
    train_cases, val_cases = data.split(args.validation_fraction, seed=args.seed)
    first = data.cases[0].image
    spacing = args.spacing or [float(s) for s in np.median(
        [c.image.spacing for c in train_cases], axis=0)]
    normalization = _json_argument(args.normalization, "--normalization") or dict(
        _NORMALIZATION.get(first.modality, {"scheme": "zscore"}))
    modality = first.modality if first.modality in ("CT", "MR", "PT") else "OT"
    names = [data.labels.get(v, f"label {v}") for v in range(max(data.labels) + 1)]
    run = TrainingConfig(
        args.model, config, patch_size=args.patch_size, spacing=spacing,
        orientation=None if first.is_oblique else first.orientation,
        normalization=normalization, modality=modality, batch_size=args.batch_size,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, augment=augment,
        initial_weights=args.init)
    result = train(
        run, train_cases, classes=names, out_dir=args.out, val_cases=val_cases,
        device=args.device, resume=args.resume, num_workers=args.workers,
        card_fields={"name": args.name or Path(args.out).resolve().name,
                     "training_data": f"{len(train_cases)} case(s) of {data.source} "
                                      f"(channels {', '.join(data.channel_names)})."},
        progress_bar=not args.no_progress)
    last = result.history[-1]
    summary = f"loss {last['loss']:.4f}"
    if "val_dice" in last:
        summary += f", validation Dice {last['val_dice']:.4f}"
    print(f"Trained {result.card.name} for {last['epoch']} epoch(s) ({summary}).")
    print(f"best model: {result.best}\nlast model: {result.last}\ncurves: {result.curves}")
    return 0

