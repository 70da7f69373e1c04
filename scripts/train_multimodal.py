"""Train DMAF-Net-style fusion and the two baselines (region-aware late fusion, early fusion)
under one protocol, measure Dice (WT/TC/ET) and HD95 on every one of the 15 modality subsets
of held-out cases, and ship the best DMAF weights.

One run trains the chosen models for one or more seeds and writes per-case rows::

    nice -n 10 python scripts/train_multimodal.py run --seeds 0 1 2 \
        --models dmaf region early --steps 400 --runs /tmp/dmaf/runs

``summarise`` turns every run's rows into the tables (mean +- SD over seeds) in
``docs/multimodal/`` and between the table markers of ``docs/multimodal.md``, and with
``--ship`` saves the DMAF seed with the best mean WT Dice on the validation cases as a
model folder with its card::

    python scripts/train_multimodal.py summarise --runs /tmp/dmaf/runs \
        --ship src/napari_medattn/weights/dmaf-brain-tumour

Data (``--data``): synthetic BraTS-like cases
(:func:`~napari_medattn.training.multimodal_synthesis.synthetic_multimodal_case`, whole 2 mm
heads) or a BraTS-layout folder (:mod:`napari_medattn.training.brats`, resampled to 2 mm).
Every image is normalised exactly as inference does (the card's ``zscore`` over the whole
head). Training draws random ``--crop`` cubes (two in three centred near the tumour, the
rest anywhere in the head, so the model also sees tumour-free brain) and flips. Held-out
test and validation cases are seeds never drawn in training (new deformations and
tumours), scored on an ``--eval-crop`` cube around the tumour.

Protocol (every model): the same cases, the same draws of crops and missing modalities
(imbalanced rates ``--missing-rates``, at least one present), the same optimiser, learning
rate and number of steps. DMAF adds its training options: relation and prototype
distillation from a full-modality teacher -- the same network run on all four modalities
without gradient (self-distillation: no separately trained teacher fits in a short CPU
run) -- and the per-modality training monitor. The ablation variants (``dmaf-no-masking``,
``dmaf-no-relation``, ``dmaf-no-prototype``, ``dmaf-no-monitoring``) each remove one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from napari_medattn.metrics.segmentation import evaluate_pair
from napari_medattn.models import create
from napari_medattn.models.brats import REGIONS, classes_to_labels, region_masks
from napari_medattn.training.losses import dice_ce_loss
from napari_medattn.training.multimodal import (
    ModalityMonitor,
    prototype_distillation,
    relation_distillation,
)
from napari_medattn.training.multimodal_cases import (
    MODALITIES,
    SPACING_MM,
    case_arrays,
    random_crop,
    tumour_crop,
)
from napari_medattn.training.multimodal_synthesis import draw_presence
from napari_medattn.training.multimodal_table import summarise_runs

SUBSETS = [s for r in range(1, 5) for s in itertools.combinations(range(4), r)]
TEST_SEED_OFFSET = 900_000  # held-out seeds: never used for training cases
VAL_SEED_OFFSET = 800_000
#: Variant name -> (architecture kind, DMAF options switched off).
VARIANTS = {
    "dmaf": ("dmaf", ()), "region": ("region", ()), "early": ("early", ()),
    "dmaf-no-masking": ("dmaf", ("masking",)), "dmaf-no-relation": ("dmaf", ("relation",)),
    "dmaf-no-prototype": ("dmaf", ("prototype",)),
    "dmaf-no-monitoring": ("dmaf", ("monitoring",)),
}
CHANNELS = {"dmaf": [8, 16, 32], "region": [8, 16, 32], "early": [16, 32, 64]}


def build(variant: str, seed: int) -> torch.nn.Module:
    """The network of ``variant``, initialised from ``seed``."""
    kind, off = VARIANTS[variant]
    torch.manual_seed(seed)
    common = {"modalities": MODALITIES, "out_channels": 4, "channels": CHANNELS[kind]}
    if kind == "dmaf":
        return create("dmaf_net", masking="masking" not in off, **common)
    return create("region_fusion_net" if kind == "region" else "early_fusion_unet", **common)


def _batch(cases, rng, args):
    picks = rng.integers(len(cases), size=args.batch)
    crops = [random_crop(cases[i], args.crop, rng) for i in picks]
    x = torch.stack([torch.from_numpy(c[0]) for c in crops])
    target = torch.stack([torch.from_numpy(c[1]) for c in crops])
    present = torch.from_numpy(np.stack([draw_presence(rng, args.missing_rates)
                                         for _ in picks]))
    flips = [a + 2 for a in range(3) if rng.random() < 0.5]
    if flips:
        x, target = x.flip(flips), target.flip([a - 1 for a in flips])
    return x, target, present


def train(model, variant: str, cases: list[dict], args, seed: int) -> dict:
    """``args.steps`` steps of Adam; returns steps, the segmentation loss (soft Dice +
    cross-entropy, without distillation or monitor weights, so comparable across models):
    its mean over the last 20 steps and its curve (mean of each tenth of the run), and the
    monitor's final modality weights."""
    kind, off = VARIANTS[variant]
    rng = np.random.default_rng(seed)  # same crop and subset draws for every model
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    monitor = ModalityMonitor(len(MODALITIES))
    relation = kind == "dmaf" and "relation" not in off
    prototype = kind == "dmaf" and "prototype" not in off
    monitoring = kind == "dmaf" and "monitoring" not in off and (relation or prototype)
    seg_losses = []
    model.train()
    for _ in range(args.steps):
        x, target, present = _batch(cases, rng, args)
        logits, features = model.forward_features(x, present)
        per_case = torch.stack([dice_ce_loss(logits[i:i + 1], target[i:i + 1])
                                for i in range(len(x))])
        seg_losses.append(float(per_case.detach().mean()))
        if relation or prototype:
            with torch.no_grad():
                _, teacher = model.forward_features(x, None)
            gaps = torch.zeros(len(x))
            for i in range(len(x)):
                s, t, y = features[i:i + 1], teacher[i:i + 1], target[i:i + 1]
                gap = relation_distillation(s, t, y, 4) if relation else 0.0
                gaps[i] = gap + (prototype_distillation(s, t, y, 4) if prototype else 0.0)
            per_case = per_case + args.distillation_weight * gaps
            if monitoring:
                monitor.update(gaps, present)
        weights = monitor.case_weights(present) if monitoring else torch.ones(len(x))
        loss = (weights * per_case).mean()
        optimiser.zero_grad()
        loss.backward()
        if monitoring:
            monitor.scale_gradients(model.encoders)
        optimiser.step()
    tenths = np.array_split(np.asarray(seg_losses), min(10, len(seg_losses)) or 1)
    return {"steps": len(seg_losses),
            "final_loss": float(np.mean(seg_losses[-20:])) if seg_losses else float("nan"),
            "loss_curve": [round(float(t.mean()), 4) for t in tenths if t.size],
            "modality_weights": monitor.weights().tolist()}


def evaluate(model, variant: str, cases: list[dict], seed: int = 0) -> list[dict]:
    """Dice and HD95 (mm) of WT, TC and ET for every case and each of the 15 subsets."""
    rows = []
    model.eval()
    for c, case in enumerate(cases):
        for subset in SUBSETS:
            present = torch.tensor([m in subset for m in range(4)])
            with torch.no_grad():
                logits = model(torch.from_numpy(case["x"])[None], present)
            labels = classes_to_labels(logits.argmax(1)[0].numpy())
            pred, ref = region_masks(labels), region_masks(case["labels"])
            row = {"model": variant, "seed": seed,
                   "subset": "+".join(MODALITIES[m] for m in subset), "case": c}
            for region in REGIONS:
                score = evaluate_pair(pred[region], ref[region], spacing=case["spacing"],
                                      classes=[1])[0]
                row[f"dice_{region}"] = score.dice
                row[f"hd95_{region}"] = score.hd95_mm
            rows.append(row)
    return rows


def _cached_cases(ids, args) -> list[dict]:
    """Model-grid cases by id, each made once and cached as ``runs/cases/<id>.npz``.

    Several runs started together share the work: a run claims a case by creating its
    ``.lock`` file (exclusive create), makes the cases nobody claimed, then waits for the
    others' files.
    """
    folder = args.runs / "cases"
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(ids)
    for i in ids:
        path = folder / f"{i}.npz"
        try:
            lock = os.open(folder / f"{i}.lock", os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            continue
        os.close(lock)
        (case,) = case_arrays([i], data=args.data)
        np.savez(folder / f"{i}.tmp.npz", case=np.array([case], dtype=object))
        os.replace(folder / f"{i}.tmp.npz", path)
    cases = []
    for i in ids:
        path = folder / f"{i}.npz"
        while not path.exists():
            time.sleep(5)
        cases.append(np.load(path, allow_pickle=True)["case"][0])
    return cases


def load_or_make_cases(args) -> tuple[list[dict], list[dict], list[dict]]:
    """Training cases (whole heads), validation and test cases (tumour crops)."""
    started = time.monotonic()
    n_train, n_val, n_test = args.train_cases, args.val_cases, args.test_cases
    if args.data == "synthetic":  # seeds: held-out ones are never drawn in training
        val_ids = range(VAL_SEED_OFFSET, VAL_SEED_OFFSET + n_val)
        test_ids = range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + n_test)
    else:  # a BraTS folder: the first cases train, the next validate, the last test
        val_ids = range(n_train, n_train + n_val)
        test_ids = range(n_train + n_val, n_train + n_val + n_test)
    train_cases = _cached_cases(range(n_train), args)
    val_cases = [tumour_crop(c, args.eval_crop) for c in _cached_cases(val_ids, args)]
    test_cases = [tumour_crop(c, args.eval_crop) for c in _cached_cases(test_ids, args)]
    print(f"data: {n_train} training, {n_val} validation, {n_test} test cases in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    return train_cases, val_cases, test_cases


def run(args) -> int:
    torch.set_num_threads(args.threads)
    train_cases, val_cases, test_cases = load_or_make_cases(args)
    for seed in args.seeds:
        for variant in args.models:
            model = build(variant, seed)
            cpu0, wall0 = time.process_time(), time.monotonic()
            facts = train(model, variant, train_cases, args, seed)
            facts.update(cpu_s=time.process_time() - cpu0, wall_s=time.monotonic() - wall0,
                         parameters=sum(p.numel() for p in model.parameters()),
                         config=model.config, architecture=model.architecture,
                         protocol={k: v for k, v in vars(args).items()
                                   if k in ("steps", "batch", "lr", "crop", "eval_crop",
                                            "missing_rates", "distillation_weight",
                                            "train_cases", "data")})
            facts["protocol"]["data"] = str(facts["protocol"]["data"])
            stem = args.runs / f"{variant}_seed{seed}"
            facts["test"] = evaluate(model, variant, test_cases, seed)
            facts["val"] = evaluate(model, variant, val_cases, seed)
            stem.with_suffix(".json").write_text(json.dumps(facts, default=float))
            if VARIANTS[variant] == ("dmaf", ()):
                from safetensors.torch import save_file
                save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                          str(stem.with_suffix(".safetensors")))
            wt = np.mean([r["dice_WT"] for r in facts["test"]])
            print(f"{variant} seed {seed}: {facts['steps']} steps, {facts['cpu_s']:.0f} "
                  f"CPU-s, loss {facts['final_loss']:.3f}, test mean WT {100 * wt:.1f}",
                  flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run", help="train and evaluate models for some seeds")
    go.add_argument("--models", nargs="+", choices=list(VARIANTS),
                    default=["dmaf", "region", "early"])
    go.add_argument("--seeds", type=int, nargs="+", default=[0])
    go.add_argument("--data", default="synthetic",
                    help="'synthetic' or a BraTS-layout folder")
    go.add_argument("--train-cases", type=int, default=12)
    go.add_argument("--val-cases", type=int, default=2)
    go.add_argument("--test-cases", type=int, default=4)
    go.add_argument("--crop", type=int, default=24, help="training cube edge in 2 mm voxels")
    go.add_argument("--eval-crop", type=int, default=40,
                    help="held-out cube edge around the tumour, 2 mm voxels")
    go.add_argument("--steps", type=int, default=400)
    go.add_argument("--batch", type=int, default=2)
    go.add_argument("--lr", type=float, default=2e-3)
    go.add_argument("--missing-rates", type=float, nargs=4, default=(0.3, 0.6, 0.2, 0.5),
                    help="probability that t1, t1ce, t2, flair are missing in a draw")
    go.add_argument("--distillation-weight", type=float, default=0.1)
    # One thread: on a shared 2-core machine two OpenMP threads spin against other jobs and
    # ran DMAF several times slower (22 s per step against about 2 s).
    go.add_argument("--threads", type=int, default=1)
    go.add_argument("--runs", type=Path, default=Path("/tmp/multimodal_runs"))
    table = commands.add_parser("summarise", help="tables from the runs; ship the best DMAF")
    table.add_argument("--runs", type=Path, default=Path("/tmp/multimodal_runs"))
    table.add_argument("--out", type=Path, default=Path("docs/multimodal"))
    table.add_argument("--page", type=Path, default=Path("docs/multimodal.md"))
    table.add_argument("--ship", type=Path, help="model folder for the best DMAF seed")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    return summarise_runs(args.runs, args.out, args.page, args.ship, SPACING_MM)


if __name__ == "__main__":
    raise SystemExit(main())
