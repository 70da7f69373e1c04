"""Make synthetic scans, train ``medformer-lesion-classifier`` on them, and measure it.

Subcommands::

    python scripts/train_classifier.py data --out .classifier_data --train 160 --held-out 60
    python scripts/train_classifier.py train --data .classifier_data .detector_data \
        --out src/napari_medattn/weights/medformer-lesion-classifier --seconds 1500 \
        --backbone-from medformer-lesion-detector
    python scripts/train_classifier.py evaluate --data .classifier_data \
        --model src/napari_medattn/weights/medformer-lesion-classifier
    python scripts/train_classifier.py heatmaps --data .classifier_data \
        --model src/napari_medattn/weights/medformer-lesion-classifier

``data`` writes one ``case_<seed>.npz`` per scan (FLAIR-like image, affine, truth boxes as
JSON, label) from :func:`napari_medattn.training.lesion_synthesis.synthetic_lesion_case`
with ``max_lesions`` 2: training seeds start at :data:`TRAIN_SEED`, held-out seeds at
:data:`HELD_OUT_SEED`, so no held-out scan is ever trained on (nor any scan of the
detector's data, seeds 0-47). ``train`` runs
:func:`napari_medattn.classification.training.train_classifier` under a wall-clock budget;
``evaluate`` writes AUC (bootstrap 95 % CI), accuracy, sensitivity and specificity on the
held-out scans into the card; ``heatmaps`` measures how far the peak of each heat map lies
from the nearest large lesion in the held-out scans that hold one, against chance (the
mean distance of the brain's voxels), and prints ``FIGURE`` lines.
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

TRAIN_SEED = 100_000
HELD_OUT_SEED = 200_000


def write_case(seed: int, out: Path) -> Path:
    from napari_medattn.classification.training import MAX_LESIONS, has_large_lesion
    from napari_medattn.training.lesion_synthesis import synthetic_lesion_case

    case = synthetic_lesion_case(seed, max_lesions=MAX_LESIONS)
    path = out / f"case_{seed}.npz"
    tmp = out / f".case_{seed}.tmp.npz"
    np.savez_compressed(tmp, image=case.image.data.astype(np.float32),
                        instances=case.instances.data, affine=case.image.affine,
                        lesions=json.dumps([d.to_dict() for d in case.lesions]),
                        label=has_large_lesion(case.lesions))
    tmp.replace(path)
    return path


def read_case(path: Path) -> tuple[Volume, int, list[Detection], np.ndarray]:
    """Image, label, truth boxes and lesion instance map of a case written by ``data`` (or
    by ``scripts/train_detector.py data``, whose cases are labelled from their boxes)."""
    from napari_medattn.classification.training import has_large_lesion

    with np.load(path) as data:
        image = Volume(data["image"], data["affine"], "MR", {"name": path.stem})
        lesions = [Detection.from_dict(d) for d in json.loads(str(data["lesions"]))]
        label = int(data["label"]) if "label" in data else has_large_lesion(lesions)
        return image, label, lesions, data["instances"]


def seed_of(path: Path) -> int:
    return int(path.stem.split("_")[1])


def case_paths(folders: list[Path], held_out: bool) -> list[Path]:
    paths = sorted((p for folder in folders for p in folder.glob("case_*.npz")), key=seed_of)
    return [p for p in paths if (seed_of(p) >= HELD_OUT_SEED) == held_out]


def describe_seeds(paths: list[Path], labels: list[int]) -> str:
    """Which scans a run used, for the card (seed ranges per folder)."""
    parts = []
    for folder in sorted({p.parent for p in paths}):
        seeds = sorted(seed_of(p) for p in paths if p.parent == folder)
        lesions = "max_lesions 2" if seeds[0] >= TRAIN_SEED else \
            "max_lesions 4, the detector's scans of scripts/train_detector.py"
        parts.append(f"{len(seeds)} scans of seeds {seeds[0]}-{seeds[-1]} ({lesions})")
    return f"{'; '.join(parts)}; {sum(labels)} of the {len(paths)} with a lesion of 10 mm " \
           f"or more"


def heat_map_distances(data: Path, model: Path) -> dict[str, float]:
    """Peak-to-lesion distance (mm) of each heat map against chance, on held-out positives."""
    from napari_medattn.classification.classify import heat_map
    from napari_medattn.classification.training import LARGE_LESION_MM
    from napari_medattn.explain import explain
    from napari_medattn.models.registry import load_model

    module, card = load_model(model)
    # The head pools stage 2 (CAM_LAYER): its Grad-CAM is the head's own token evidence;
    # stage 3 lies past the head and gets no gradient.
    kinds = {"gradcam_stage2": ("gradcam", "backbone.stages.2")}
    found: dict[str, list[float]] = {k: [] for k in [*kinds, "routing", "chance"]}
    for path in case_paths([data], held_out=True):
        image, label, lesions, _ = read_case(path)
        large = [d for d in lesions if float(np.max(d.size_mm)) >= LARGE_LESION_MM]
        if not label:
            continue
        centres = np.array([d.centre_mm for d in large])

        def nearest(points_mm: np.ndarray, centres: np.ndarray = centres) -> np.ndarray:
            return np.linalg.norm(points_mm[:, None] - centres[None], axis=2).min(axis=1)

        brain = np.argwhere(np.asarray(image.data) > np.percentile(image.data, 60))
        found["chance"].append(float(nearest(image.index_to_mm(brain)).mean()))
        maps = {name: explain(image, module, card, method, target_class=1, layer=layer,
                              device="cpu")[0].volume for name, (method, layer) in kinds.items()}
        maps["routing"] = heat_map(image, module, card, "routing", device="cpu").volume
        for name, volume in maps.items():
            peak = np.unravel_index(int(np.argmax(volume.data)), volume.data.shape)
            found[name].append(float(nearest(image.index_to_mm(np.array([peak])))[0]))
    return {name: float(np.mean(values)) for name, values in found.items()} | {
        "scans": len(found["chance"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--train", type=int, default=160)
    data.add_argument("--held-out", type=int, default=60)
    train = sub.add_parser("train")
    train.add_argument("--data", type=Path, nargs="+", required=True,
                       help="folders of cases (this script's, or train_detector.py's)")
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--seconds", type=float, default=1500.0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--backbone-from", metavar="MODEL",
                       help="start from this model's MedFormer backbone (e.g. "
                            "medformer-lesion-detector) instead of random weights, or "
                            "continue this classifier (same configuration)")
    for name in ("evaluate", "heatmaps"):
        command = sub.add_parser(name)
        command.add_argument("--data", type=Path, nargs="+", required=True)
        command.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "data":
        args.out.mkdir(parents=True, exist_ok=True)
        seeds = [*range(TRAIN_SEED, TRAIN_SEED + args.train),
                 *range(HELD_OUT_SEED, HELD_OUT_SEED + args.held_out)]
        for seed in seeds:
            if not (args.out / f"case_{seed}.npz").exists():
                started = time.perf_counter()
                write_case(seed, args.out)
                print(f"case {seed} in {time.perf_counter() - started:.1f} s", flush=True)
        return 0
    from napari_medattn.classification import training

    if args.command == "train":
        paths = case_paths(args.data, held_out=False)
        cases = [read_case(p) for p in paths]
        labels = [label for _, label, _, _ in cases]
        images = [image for image, _, _, _ in cases]
        inputs = training.prepared_inputs(images)
        masks = training.prepared_masks(images, [training.large_lesion_mask(instances, lesions)
                                                 for _, _, lesions, instances in cases])
        training.train_classifier(
            inputs, labels, args.out, seconds=args.seconds, seed=args.seed,
            batch_size=args.batch_size, masks=masks, lr=args.lr,
            training_data=training.TRAINING_DATA.format(what=describe_seeds(paths, labels)),
            command=" ".join(["python", *sys.argv]), backbone_from=args.backbone_from)
        return 0
    if args.command == "evaluate":
        cases = [read_case(p)[:2] for p in case_paths(args.data, held_out=True)]
        scores = training.evaluate_classifier(args.model, cases)
        print(json.dumps(scores, indent=2))
        for name in ("auc", "auc_ci95_low", "auc_ci95_high", "accuracy", "sensitivity",
                     "specificity"):
            print(f"FIGURE classifier_{name} {scores[name]:.3f} ratio")
        print(f"FIGURE classifier_seconds_per_scan {scores['seconds_per_scan']:.2f} s")
        return 0
    for name, value in heat_map_distances(args.data[0], args.model).items():
        print(f"FIGURE heatmap_peak_to_lesion_{name} {value:.1f} "
              f"{'scans' if name == 'scans' else 'mm'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
