"""Train DMAF-Net-style fusion and the early-fusion baseline under one protocol on synthetic
BraTS-like cases, and measure Dice (WT/TC/ET) and HD95 on every one of the 15 modality
subsets of held-out cases.

    python scripts/train_multimodal.py --train-cases 8 --test-cases 3 --crop 24 \
        --max-steps 80 --minutes 4 --threads 1 --out docs/multimodal

Protocol (both models): the same training cases, the same draws of missing modalities
(imbalanced rates ``--missing-rates``, at least one present), the same optimiser, learning
rate and number of steps (``--max-steps``; ``--minutes`` caps each model's wall time).
DMAF adds its training options: relation and prototype distillation from a full-modality
teacher -- here the same network run on all four modalities without gradient
(self-distillation: no separately trained teacher fits in a short CPU run) -- and the
per-modality training monitor. Held-out cases use seeds never
drawn in training (new anatomy deformations and tumours).

Writes ``multimodal_subsets.csv`` (one row per model, subset and case) and
``multimodal_table.md`` (means per subset and over the 15 subsets) into ``--out``, and ends
with ``FIGURE`` lines. Weights are not written: a run this short is not a model to ship.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from napari_medattn.inference.preprocess import robust_zscore
from napari_medattn.io.atomic import write_text_atomically
from napari_medattn.metrics.segmentation import evaluate_pair
from napari_medattn.models import create
from napari_medattn.training.losses import dice_ce_loss
from napari_medattn.training.multimodal import (
    ModalityMonitor,
    prototype_distillation,
    relation_distillation,
)
from napari_medattn.training.multimodal_synthesis import (
    BRATS_MODALITIES,
    REGIONS,
    classes_to_labels,
    draw_presence,
    labels_to_classes,
    region_masks,
    synthetic_multimodal_case,
)

MODALITIES = tuple(BRATS_MODALITIES)
SUBSETS = [s for r in range(1, 5) for s in itertools.combinations(range(4), r)]
TEST_SEED_OFFSET = 900_000  # held-out seeds: never used for training cases


def make_cases(seeds, crop):
    cases = []
    for seed in seeds:
        case = synthetic_multimodal_case(int(seed), crop=(crop,) * 3)
        # The head (non-zero voxels) is the foreground: the crops hold little background
        # for Otsu's threshold to find.
        x = np.stack([robust_zscore(case.images[m].data, mask=case.images[m].data != 0)
                      for m in MODALITIES])
        cases.append({"x": torch.from_numpy(x), "labels": case.labels.data,
                      "target": torch.from_numpy(labels_to_classes(case.labels.data)),
                      "spacing": case.labels.spacing})
    return cases


def build(kind: str, seed: int, masking: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "dmaf":
        return create("dmaf_net", modalities=MODALITIES, out_channels=4, channels=[8, 16, 32],
                      masking=masking)
    return create("early_fusion_unet", modalities=MODALITIES, out_channels=4,
                  channels=[16, 32, 64])


def train(model, kind, cases, args) -> dict:
    """Train for ``args.minutes`` (or ``args.max_steps``); returns steps and last losses."""
    rng = np.random.default_rng(args.seed)  # same case and subset draws for every model
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    monitor = ModalityMonitor(len(MODALITIES))
    distil = kind == "dmaf" and not args.no_distillation
    monitoring = kind == "dmaf" and not args.no_monitoring
    deadline = time.monotonic() + 60 * args.minutes
    step, losses = 0, []
    model.train()
    while time.monotonic() < deadline and step < args.max_steps:
        picks = rng.integers(len(cases), size=args.batch)
        x = torch.stack([cases[i]["x"] for i in picks])
        target = torch.stack([cases[i]["target"] for i in picks])
        present = torch.from_numpy(np.stack([draw_presence(rng, args.missing_rates)
                                             for _ in picks]))
        flips = [a + 2 for a in range(3) if rng.random() < 0.5]
        if flips:
            x, target = x.flip(flips), target.flip([a - 1 for a in flips])
        logits, features = model.forward_features(x, present)
        per_case = torch.stack([dice_ce_loss(logits[i:i + 1], target[i:i + 1])
                                for i in range(len(picks))])
        if distil:
            with torch.no_grad():
                _, teacher = model.forward_features(x, None)
            gaps = torch.stack([
                relation_distillation(features[i:i + 1], teacher[i:i + 1], target[i:i + 1], 4)
                + prototype_distillation(features[i:i + 1], teacher[i:i + 1],
                                         target[i:i + 1], 4)
                for i in range(len(picks))])
            per_case = per_case + args.distillation_weight * gaps
            if monitoring:
                monitor.update(gaps, present)
        weights = monitor.case_weights(present) if monitoring else torch.ones(len(picks))
        loss = (weights * per_case).mean()
        optimiser.zero_grad()
        loss.backward()
        if monitoring:
            monitor.scale_gradients(model.encoders)
        optimiser.step()
        losses.append(float(loss.detach()))
        step += 1
    return {"steps": step, "final_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
            "modality_weights": monitor.weights().tolist()}


def evaluate(model, kind, cases) -> list[dict]:
    rows = []
    model.eval()
    for c, case in enumerate(cases):
        for subset in SUBSETS:
            present = torch.tensor([m in subset for m in range(4)])
            with torch.no_grad():
                logits = model(case["x"][None], present)
            labels = classes_to_labels(logits.argmax(1)[0].numpy())
            pred, ref = region_masks(labels), region_masks(case["labels"])
            row = {"model": kind, "subset": "+".join(MODALITIES[m] for m in subset),
                   "case": c}
            for region in REGIONS:
                score = evaluate_pair(pred[region], ref[region], spacing=case["spacing"],
                                      classes=[1])[0]
                row[f"dice_{region}"] = score.dice
                row[f"hd95_{region}"] = score.hd95_mm
            rows.append(row)
    return rows


def tables(rows: list[dict], runs: dict) -> tuple[str, str]:
    fields = list(rows[0])
    text = io.StringIO()
    writer = csv.DictWriter(text, fields)
    writer.writeheader()
    writer.writerows(rows)
    lines = ["| subset | " + " | ".join(f"{k} {r}" for k in runs for r in REGIONS) + " |",
             "| --- |" + " --- |" * (len(runs) * len(REGIONS))]
    means = {}
    for subset in ["+".join(MODALITIES[m] for m in s) for s in SUBSETS]:
        cells = []
        for kind in runs:
            for region in REGIONS:
                values = [r[f"dice_{region}"] for r in rows
                          if r["model"] == kind and r["subset"] == subset]
                means.setdefault((kind, region), []).append(np.mean(values))
                cells.append(f"{100 * np.mean(values):.1f}")
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
    lines.append("| **mean of 15** | " + " | ".join(
        f"**{100 * np.mean(means[(k, r)]):.1f}**" for k in runs for r in REGIONS) + " |")
    return text.getvalue(), "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-cases", type=int, default=8)
    parser.add_argument("--test-cases", type=int, default=3)
    parser.add_argument("--crop", type=int, default=32, help="cube edge in 2 mm voxels")
    parser.add_argument("--minutes", type=float, default=2.5, help="training budget per model")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--missing-rates", type=float, nargs=4, default=(0.3, 0.6, 0.2, 0.5),
                        help="probability that t1, t1ce, t2, flair are missing in a draw")
    parser.add_argument("--distillation-weight", type=float, default=0.1)
    parser.add_argument("--no-distillation", action="store_true")
    parser.add_argument("--no-monitoring", action="store_true")
    parser.add_argument("--no-masking", action="store_true",
                        help="ablation: DMAF attends to zero-filled missing modalities")
    parser.add_argument("--seed", type=int, default=0)
    # One thread: on a shared 2-core machine two OpenMP threads spin against other jobs and
    # ran DMAF several times slower (22 s per step against about 2 s).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/multimodal"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    train_cases = make_cases(range(args.seed * 1000, args.seed * 1000 + args.train_cases),
                             args.crop)
    test_cases = make_cases(range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + args.test_cases),
                            args.crop)
    print(f"data: {len(train_cases)} training, {len(test_cases)} held-out cases "
          f"in {time.monotonic() - start:.0f} s", flush=True)
    rows, runs = [], {}
    for kind in ("dmaf", "early"):
        model = build(kind, args.seed, masking=not args.no_masking)
        t0 = time.monotonic()
        runs[kind] = train(model, kind, train_cases, args)
        runs[kind]["seconds"] = time.monotonic() - t0
        runs[kind]["parameters"] = sum(p.numel() for p in model.parameters())
        print(kind, runs[kind], flush=True)
        rows += evaluate(model, kind, test_cases)
    csv_text, table = tables(rows, runs)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.out / "multimodal_subsets.csv", csv_text)
    write_text_atomically(args.out / "multimodal_table.md", table)
    print(table)
    for kind in runs:
        for region in REGIONS:
            mean = np.mean([r[f"dice_{region}"] for r in rows if r["model"] == kind])
            print(f"FIGURE {kind}_mean15_dice_{region} {100 * mean:.1f} %")
        print(f"FIGURE {kind}_train_steps {runs[kind]['steps']} steps")
    print(f"FIGURE wall_time {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
