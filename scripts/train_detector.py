"""Make synthetic lesion data, train ``medformer-lesion-detector`` on it, and measure it.

Subcommands::

    python scripts/train_detector.py data --out .detector_data --cases 48
    python scripts/train_detector.py train --data .detector_data --out weights_dir \
        --seconds 600 --threads 2
    python scripts/train_detector.py evaluate --data .detector_data --model weights_dir

``data`` writes one ``case_XXXX.npz`` per case (FLAIR-like image, lesion instance map,
affine, truth boxes as JSON) from
:func:`napari_medattn.training.lesion_synthesis.synthetic_lesion_case` with seed ``i``.
Cases whose index is at least ``--held-out-from`` (default 40) are never trained on.
``train`` runs :func:`napari_medattn.detection.training.train_detector` under a wall-clock
budget and writes the weights and card; ``evaluate`` measures FROC/CPM/AP on the
held-out cases and writes the figures into the card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_medattn.detection import Detection
from napari_medattn.io.volume import Volume

HELD_OUT_FROM = 40


def write_case(index: int, out: Path) -> Path:
    from napari_medattn.training.lesion_synthesis import synthetic_lesion_case

    case = synthetic_lesion_case(index)
    path = out / f"case_{index:04d}.npz"
    tmp = out / f".case_{index:04d}.tmp.npz"
    np.savez_compressed(tmp, image=case.image.data.astype(np.float32),
                        instances=case.instances.data, affine=case.image.affine,
                        lesions=json.dumps([d.to_dict() for d in case.lesions]))
    tmp.replace(path)
    return path


def read_case(path: Path) -> tuple[Volume, list[Detection]]:
    """The image and truth boxes of a case written by ``data``."""
    with np.load(path) as data:
        image = Volume(data["image"], data["affine"], "MR", {"name": path.stem})
        lesions = [Detection.from_dict(d) for d in json.loads(str(data["lesions"]))]
    return image, lesions


def case_paths(folder: Path, held_out: bool, held_out_from: int = HELD_OUT_FROM) -> list[Path]:
    paths = sorted(folder.glob("case_*.npz"))
    return [p for p in paths if (int(p.stem.split("_")[1]) >= held_out_from) == held_out]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--cases", type=int, default=48)
    data.add_argument("--threads", type=int, default=1)
    train = sub.add_parser("train")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--seconds", type=float, default=600.0)
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=2)
    train.add_argument("--positive-weight", type=float, default=1.0,
                       help="weight of the true centres in the focal loss (default 1)")
    train.add_argument("--start-from", metavar="MODEL",
                       help="continue from this detector (same configuration)")
    train.add_argument("--lr", type=float, default=3e-3)
    evaluate = sub.add_parser("evaluate")
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--model", type=Path, required=True)
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.add_argument("--tta", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "data":
        args.out.mkdir(parents=True, exist_ok=True)
        for i in range(args.cases):
            if not (args.out / f"case_{i:04d}.npz").exists():
                started = time.perf_counter()
                write_case(i, args.out)
                print(f"case {i} in {time.perf_counter() - started:.1f} s", flush=True)
        return 0
    from napari_medattn.detection import training

    if args.command == "train":
        cases = [read_case(p) for p in case_paths(args.data, held_out=False)]
        training.train_detector(cases, args.out, seconds=args.seconds, seed=args.seed,
                                batch_size=args.batch_size,
                                positive_weight=args.positive_weight,
                                start_from=args.start_from, lr=args.lr,
                                command=" ".join(["python", *sys.argv]))
        return 0
    cases = [read_case(p) for p in case_paths(args.data, held_out=True)]
    scores = training.evaluate_detector(args.model, cases, tta=args.tta,
                                        write_card=not args.tta)
    print(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
