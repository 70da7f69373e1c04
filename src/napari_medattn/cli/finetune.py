"""``medattn finetune``: fine-tune a model on one image and its labels, as the napari
"Fine-tune" widget does, and install it as a user model (see
:func:`napari_medattn.training.finetune.finetune`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn finetune IMAGE LABELS --model BASE --name NEW [options]``."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on one image and its corrected labels; save it as a user "
             "model",
        description="Fine-tune a model on one scan and a label map on its grid (every voxel "
                    "is a target, 0 is background: correct a model's result rather than "
                    "paint a few strokes), then segment the scan with the new model and "
                    "save its weights and card in the per-user model folder, where "
                    "`medattn models`, `medattn segment --model NEW` and the napari widgets "
                    "find it. The card's metrics are measured on this same image. An "
                    "existing model name is refused.",
    )
    parser.add_argument("image", metavar="IMAGE", help="the scan: NIfTI file or DICOM series")
    parser.add_argument("labels", metavar="LABELS",
                        help="label map on the scan's grid (NIfTI), values 0..classes-1")
    parser.add_argument("--model", required=True, metavar="NAME|DIR",
                        help="base model: a name from `medattn models` or a model folder")
    parser.add_argument("--name", required=True, help="name of the new model (and its folder)")
    # Defaults are the library's (left as None here: importing it would load torch for
    # `medattn --help`); the help texts name them, and a test keeps them in step.
    parser.add_argument("--steps", type=int, default=None,
                        help="optimisation steps (default 20)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default 0.0002)")
    parser.add_argument("--batch-size", type=int, default=2, help="patches per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--modality",
                        help="override the scan's modality (e.g. MR for a NIfTI that does not "
                             "say)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    """Read the scan and labels, fine-tune, print where the model is; 0 on success."""
    # Heavy imports here keep ``medattn --help`` fast.
    from napari_medattn.cli.common import ProgressBar
    from napari_medattn.io import read_volume
    from napari_medattn.training.finetune import check_model_name, finetune

    check_model_name(args.name)  # before reading a possibly large scan
    image = read_volume(args.image, modality=args.modality)
    labels = read_volume(args.labels)
    given = {k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None}
    with ProgressBar(f"fine-tune {args.name}", unit="step") as bar:

        def progress(info: dict) -> None:
            if info["phase"] == "train" and not args.no_progress:
                bar.update(info["step"], info["steps"])

        result = finetune(image, labels, args.model, name=args.name,
                          batch_size=args.batch_size, seed=args.seed, device=args.device,
                          progress=progress, **given)
    losses = result.losses
    dice = ", ".join(f"{s.name} {s.dice:.3f}" for s in result.scores)
    print(f"Fine-tuned {args.model} into {result.entry.name}: loss {losses[0]:.4f} -> "
          f"{losses[-1]:.4f} over {len(losses)} steps.")
    print(f"Dice on this same image (not held out): {dice}.")
    print(f"Saved to {result.entry.path} (listed by `medattn models`).")
    return 0
