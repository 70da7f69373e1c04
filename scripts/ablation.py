"""The attention ablation: one U-Net skeleton, eight attentions, same data, budget and seeds.

Every variant is ``napari_medattn.models.create("unet", attention=...)`` with the same
channels, so only the attention differs (see ``models/nets/unet.py``). Every run trains
on the same synthetic brain cases (background, CSF, grey matter, white matter; made from
the MNI152 template by ``scripts/train_builtin_models.py generate``, whose functions this
script imports) for the same number of optimisation steps with
:func:`napari_medattn.training.loop.train`, and is scored on held-out synthetic cases
(another seed) segmented with :func:`napari_medattn.inference.segment` as a user would,
by :func:`napari_medattn.metrics.evaluate_pair` (Dice, HD95 in mm, per class). For a given
seed every variant sees the same patches in the same order and the same augmentation
draws; only the weights' initialisation differs between architectures.

One command, from a clean checkout (about 40 minutes of one quiet CPU core)::

    python scripts/ablation.py all --data /tmp/ablation_data --out docs/ablation

or step by step (each rerunnable; ``run --resume`` skips the runs already finished)::

    python scripts/ablation.py data --data /tmp/ablation_data
    python scripts/ablation.py probe --data /tmp/ablation_data     # seconds per step
    python scripts/ablation.py run --data /tmp/ablation_data --out docs/ablation --resume
    python scripts/ablation.py report --out docs/ablation --markdown docs/ablation.md \
        --figure docs/ablation.png

``run`` writes one CSV per finished run (``<out>/runs/<variant>_seed<k>.csv``), so a cut
short run still yields a table (and several ``run --resume`` processes, e.g. one per seed,
can share an ``--out`` folder: each skips the runs another one has finished), plus ``<out>/complexity.csv`` (parameters, FLOPs and CPU
latency of one inference window per variant). ``report`` aggregates them into
``<out>/results.csv`` and rewrites the table between the markers in the markdown file
(creating the file if needed), so no number in it is copied by hand. The results' layout
on disk and the report live in ``scripts/ablation_results.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# The data pipeline of the built-in models is reused, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_builtin_models as builtin
from ablation_results import (
    FOREGROUND,
    VARIANTS,
    read_rows,
    report,
    run_path,
    write_rows,
)

#: The protocol: what every run shares. Small on purpose, sized for a 2-core CPU.
DEFAULTS = {"channels": [8, 16, 32, 64], "patch": 32, "batch": 2, "steps": 400,
            "seeds": [0, 1, 2], "train_cases": 8, "val_cases": 2, "lr": 2e-3,
            "weight_decay": 1e-4}
#: Columns of a run's CSV that must match for ``--resume`` to reuse it.
PROTOCOL = ("channels", "patch", "batch", "steps", "lr", "weight_decay", "train_cases",
            "val_cases")


# ----------------------------------------------------------------------------- setup


def build(variant: str, channels: Sequence[int]):
    """The ``variant`` U-Net (3D, 1 input channel, 4 classes) with ``channels``."""
    from napari_medattn.models import create

    return create("unet", spatial_dims=3, in_channels=1, out_channels=len(builtin.CLASSES),
                  channels=list(channels), attention=variant)


def ensure_data(folder: Path, train_cases: int, val_cases: int) -> None:
    """Generate the synthetic cases into ``folder`` unless enough are there already."""
    have_train = len(list(folder.glob("train_*.npz")))
    have_val = len(list(folder.glob("val_*.npz")))
    if have_train >= train_cases and have_val >= val_cases:
        print(f"data: {have_train} training and {have_val} validation cases in {folder}")
        return
    builtin.generate(folder, train_cases, val_cases)


def load_data(folder: Path, train_cases: int, val_cases: int) -> tuple[list, list]:
    """The first ``train_cases`` training and ``val_cases`` held-out cases of ``folder``."""
    train = builtin.load_split(folder, "train")[:train_cases]
    val = builtin.load_split(folder, "val")[:val_cases]
    if len(train) < train_cases or len(val) < val_cases:
        sys.exit(f"{folder} holds {len(train)} training and {len(val)} validation cases; "
                 f"the protocol needs {train_cases} and {val_cases} (run the data step).")
    return train, val


# ----------------------------------------------------------------------------- measure


def complexity(variants: Sequence[str], channels: Sequence[int], patch: int,
               rounds: int = 7) -> list[dict]:
    """Parameters, FLOPs and median CPU latency (ms) of one ``patch``^3 inference window.

    Latency: forward passes of a batch of one under ``torch.no_grad`` in eval mode on the
    current thread count, the variants alternating within each of ``rounds`` rounds after
    a warm-up round (so a change of machine load hits every variant alike); the median
    per variant. The range of the 1-minute load average meanwhile is recorded, since the
    CPU is shared.
    """
    import torch

    from napari_medattn.models.complexity import count_flops, count_parameters

    shape = (1, 1, patch, patch, patch)
    models = {}
    for variant in variants:
        torch.manual_seed(0)
        models[variant] = build(variant, channels).eval()
    x = torch.randn(shape)
    times: dict[str, list[float]] = {v: [] for v in variants}
    loads = []
    with torch.no_grad():
        for number in range(rounds + 1):
            for variant, model in models.items():
                started = time.perf_counter()
                model(x)
                if number:  # round 0 warms the allocator and the kernels' caches
                    times[variant].append(time.perf_counter() - started)
            loads.append(os.getloadavg()[0])
    load = f"{min(loads):.1f}-{max(loads):.1f}"
    return [{"variant": v, "params": count_parameters(m), "gflops": count_flops(m, shape) / 1e9,
             "latency_ms": 1000 * statistics.median(times[v]),
             "threads": torch.get_num_threads(), "load_1min": load}
            for v, m in models.items()]


def evaluate(module, card, val_cases: Sequence) -> dict:
    """Segment the held-out cases and score them: per-class Dice, HD95 (mm) and volumes.

    Returns means over the cases: ``dice_<class>``, ``hd95_<class>`` (finite values only),
    ``pred_ml_<class>`` and ``ref_ml_<class>``, then ``dice_mean`` (over classes),
    ``hd95_mean`` (over the finite class/case values) and ``hd95_missing`` (class/case
    pairs with no finite HD95: the class was never predicted, or only predicted).
    """
    from napari_medattn.inference import segment
    from napari_medattn.io.volume import Volume
    from napari_medattn.metrics import evaluate_pair, summarize

    scores = []
    for case in val_cases:
        image = Volume(case.image.data[0], case.image.affine, case.image.modality,
                       case.image.meta)
        labels = segment(image, module, card, device="cpu", use_autocast=False).labels
        scores += evaluate_pair(labels, case.label, classes=range(1, card.num_classes),
                                class_names=card.class_names, case=case.name)
    summary = summarize(scores)
    row: dict = {}
    for mean in (m for m in summary if m.scope == "class"):
        row[f"dice_{mean.name}"] = mean.means["dice"]
        row[f"hd95_{mean.name}"] = mean.means["hd95_mm"]
        row[f"pred_ml_{mean.name}"] = mean.means["volume_pred_ml"]
        row[f"ref_ml_{mean.name}"] = mean.means["volume_ref_ml"]
    overall = next(m for m in summary if m.scope == "all")
    row["dice_mean"] = overall.means["dice"]
    row["hd95_mean"] = overall.means["hd95_mm"]
    row["hd95_missing"] = overall.excluded["hd95_mm"]
    return row


def train_one(variant: str, seed: int, protocol: dict, train_cases, val_cases) -> dict:
    """Train ``variant`` with ``seed`` under ``protocol``; score it; return its CSV row."""
    from napari_medattn.models.registry import load_model
    from napari_medattn.training.config import TrainingConfig
    from napari_medattn.training.loop import train

    losses: list[float] = []
    run = TrainingConfig(
        "unet", {"spatial_dims": 3, "channels": protocol["channels"], "attention": variant},
        patch_size=(protocol["patch"],) * 3, spacing=builtin.SPACING_MM, orientation="RAS",
        normalization={"scheme": "zscore"}, modality="MR", batch_size=protocol["batch"],
        epochs=1, steps_per_epoch=protocol["steps"], lr=protocol["lr"],
        weight_decay=protocol["weight_decay"], seed=seed, augment=builtin.AUGMENTATION)
    with tempfile.TemporaryDirectory(prefix="ablation-") as tmp:
        started = time.perf_counter()
        result = train(run, train_cases, classes=builtin.CLASSES,
                       out_dir=Path(tmp) / f"{variant}-{seed}", device="cpu",
                       progress_bar=False, progress=lambda p: losses.append(p["loss"]))
        train_seconds = time.perf_counter() - started
        module, card = load_model(result.last, device="cpu")
        started = time.perf_counter()
        scores = evaluate(module, card, val_cases)
        eval_seconds = time.perf_counter() - started
    tail = losses[-max(1, len(losses) // 10):]  # the last 10 % of the steps
    return {"variant": variant, "seed": seed,
            **{k: (" ".join(map(str, protocol[k])) if k == "channels" else protocol[k])
               for k in PROTOCOL},
            "train_seconds": train_seconds, "eval_seconds": eval_seconds,
            "final_loss": float(np.mean(tail)), **scores}


# ----------------------------------------------------------------------------- files


def _protocol_text(protocol: dict) -> dict:
    return {k: (" ".join(map(str, protocol[k])) if k == "channels" else str(protocol[k]))
            for k in PROTOCOL}


def finished(out: Path, variant: str, seed: int, protocol: dict) -> bool:
    """Whether the run is on disk with this protocol; exits if it was made with another."""
    rows = read_rows(run_path(out, variant, seed))
    if not rows:
        return False
    wanted = _protocol_text(protocol)
    found = {k: rows[0][k] for k in PROTOCOL}
    # Floats were written with repr; compare numerically where they are numbers.
    same = all(found[k] == v or _same_number(found[k], v) for k, v in wanted.items())
    if not same:
        sys.exit(f"{run_path(out, variant, seed)} was made with {found}, not {wanted}; use "
                 f"another --out folder for another protocol.")
    return True


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


# ----------------------------------------------------------------------------- steps


def probe(args: argparse.Namespace) -> None:
    """Print seconds per training step of each variant (steps 3-8 of a short run)."""
    from napari_medattn.training.config import TrainingConfig
    from napari_medattn.training.loop import train

    train_cases, _ = load_data(args.data, args.train_cases, args.val_cases)
    total = 0.0
    for variant in args.variants:
        stamps: list[float] = []
        with tempfile.TemporaryDirectory(prefix="ablation-probe-") as tmp:
            run = TrainingConfig(
                "unet", {"spatial_dims": 3, "channels": args.channels, "attention": variant},
                patch_size=(args.patch,) * 3, spacing=builtin.SPACING_MM, orientation="RAS",
                modality="MR", batch_size=args.batch, epochs=1, steps_per_epoch=8, seed=0,
                augment=builtin.AUGMENTATION)
            train(run, train_cases, classes=builtin.CLASSES, out_dir=Path(tmp) / variant,
                  device="cpu", progress_bar=False,
                  progress=lambda p, stamps=stamps: stamps.append(time.perf_counter()))
        step = (stamps[7] - stamps[2]) / 5
        total += step
        print(f"{variant:>7}: {step:.3f} s/step", flush=True)
    print(f"sum over variants {total:.2f} s per step of each; "
          f"{args.steps} steps x {len(args.seeds)} seeds -> about "
          f"{total * args.steps * len(args.seeds) / 60:.0f} min of training", flush=True)


def run(args: argparse.Namespace) -> None:
    """Measure complexity, then train and score every (seed, variant) not yet finished."""
    protocol = {k: getattr(args, k) for k in PROTOCOL}
    out: Path = args.out
    existing = list((out / "runs").glob("*.csv")) if (out / "runs").exists() else []
    if existing and not args.resume:
        sys.exit(f"{out / 'runs'} already holds {len(existing)} runs; pass --resume to keep "
                 f"them and add the missing ones, or choose another --out.")
    done = {(v, s) for v in args.variants for s in args.seeds if finished(out, v, s, protocol)}
    # Complexity once per variant (it does not depend on the seed).
    measured = {r["variant"]: r for r in read_rows(out / "complexity.csv")
                if r["channels"] == _protocol_text(protocol)["channels"]
                and r["patch"] == str(args.patch)}
    missing = [v for v in args.variants if v not in measured]
    if missing:
        for row in complexity(missing, args.channels, args.patch):
            measured[row["variant"]] = {**row, "channels": _protocol_text(protocol)["channels"],
                                        "patch": args.patch}
        write_rows(out / "complexity.csv", [measured[v] for v in VARIANTS if v in measured])
    todo = [(v, s) for s in args.seeds for v in args.variants if (v, s) not in done]
    print(f"{len(done)} runs already finished, {len(todo)} to do", flush=True)
    if not todo:
        return
    train_cases, val_cases = load_data(args.data, args.train_cases, args.val_cases)
    # Seeds outermost: a run cut short still has every variant at the first seeds.
    for number, (variant, seed) in enumerate(todo, 1):
        if finished(out, variant, seed, protocol):  # another process (same --out) did it
            print(f"[{number}/{len(todo)}] {variant} seed {seed}: finished meanwhile", flush=True)
            continue
        row = train_one(variant, seed, protocol, train_cases, val_cases)
        write_rows(run_path(out, variant, seed), [row])
        print(f"[{number}/{len(todo)}] {variant} seed {seed}: Dice {row['dice_mean']:.3f} ("
              + ", ".join(f"{c} {row[f'dice_{c}']:.3f}" for c in FOREGROUND)
              + f"), HD95 {row['hd95_mean']:.1f} mm, loss {row['final_loss']:.3f}, "
              f"{row['train_seconds']:.0f} s + {row['eval_seconds']:.0f} s", flush=True)


# ----------------------------------------------------------------------------- CSF


def csf_diagnostic(models: Sequence[str], val_cases: Sequence) -> list[dict]:
    """How close each model comes to predicting CSF where the reference has CSF.

    Each held-out case is segmented with every class probability kept; inside the
    reference CSF the function reports the mean and 95th percentile of the CSF
    probability, the fraction of voxels where CSF wins (the predicted label) and where it
    ranks second, and the class that wins most often there; plus the largest CSF
    probability anywhere in the volume. A model whose CSF probability stays near zero
    never learned the class; one where CSF is a close second learned it but loses the
    argmax.
    """
    from napari_medattn.inference import OutputRequest, segment
    from napari_medattn.io.volume import Volume
    from napari_medattn.models.registry import load_model

    rows = []
    for name in models:
        module, card = load_model(name, device="cpu")
        for case in val_cases:
            image = Volume(case.image.data[0], case.image.affine, case.image.modality,
                           case.image.meta)
            result = segment(image, module, card, device="cpu", use_autocast=False,
                             outputs=OutputRequest(keep_probabilities=range(card.num_classes)))
            probabilities = np.stack([result.probabilities[k].data
                                      for k in range(card.num_classes)])
            inside = np.asarray(case.label.data) == 1
            ranks = np.argsort(-probabilities[:, inside], axis=0)
            csf = probabilities[1][inside]
            winners = np.bincount(ranks[0], minlength=card.num_classes)
            rows.append({
                "model": name, "case": case.name, "csf_voxels": int(inside.sum()),
                "p_csf_mean": float(csf.mean()), "p_csf_p95": float(np.percentile(csf, 95)),
                "csf_wins": float((ranks[0] == 1).mean()),
                "csf_second": float((ranks[1] == 1).mean()),
                "most_often_wins": card.class_names[int(np.argmax(winners))],
                "p_csf_max_anywhere": float(probabilities[1].max())})
            print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in rows[-1].items()), flush=True)
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    steps = {name: sub.add_parser(name)
             for name in ("data", "probe", "run", "report", "all", "csf")}
    steps["csf"].add_argument("--models", nargs="+", default=sorted(builtin.MODELS),
                              help="built-in model names or model folders")
    steps["csf"].add_argument("--csv", type=Path, default=Path("docs/ablation/csf.csv"))
    for name in ("data", "probe", "run", "all", "csf"):
        p = steps[name]
        p.add_argument("--data", type=Path, default=Path("/tmp/ablation_data"),
                       help="folder of the synthetic .npz cases")
        p.add_argument("--train-cases", type=int, default=DEFAULTS["train_cases"])
        p.add_argument("--val-cases", type=int, default=DEFAULTS["val_cases"])
    for name in ("probe", "run", "all"):
        p = steps[name]
        p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
        p.add_argument("--seeds", nargs="+", type=int, default=DEFAULTS["seeds"])
        p.add_argument("--channels", nargs="+", type=int, default=DEFAULTS["channels"])
        p.add_argument("--patch", type=int, default=DEFAULTS["patch"], help="voxels per side")
        p.add_argument("--batch", type=int, default=DEFAULTS["batch"])
        p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
        p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
        p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
        p.add_argument("--threads", type=int, default=1)
    for name in ("run", "report", "all"):
        p = steps[name]
        p.add_argument("--out", type=Path, default=Path("docs/ablation"),
                       help="results folder (runs/, complexity.csv, results.csv)")
    for name in ("run", "all"):
        steps[name].add_argument("--resume", action="store_true",
                                 help="keep finished runs of the same protocol")
    for name in ("report", "all"):
        steps[name].add_argument("--markdown", type=Path, default=Path("docs/ablation.md"))
        steps[name].add_argument("--figure", type=Path, default=Path("docs/ablation.png"))
    args = parser.parse_args(argv)
    if args.step in ("probe", "run", "all"):
        import torch

        torch.set_num_threads(args.threads)
    if args.step == "csf":
        rows = csf_diagnostic(args.models, load_data(args.data, 0, args.val_cases)[1])
        write_rows(args.csv, rows)
    if args.step in ("data", "all"):
        ensure_data(args.data, args.train_cases, args.val_cases)
    if args.step == "probe":
        probe(args)
    if args.step in ("run", "all"):
        run(args)
    if args.step in ("report", "all"):
        report(args)


if __name__ == "__main__":
    main()
