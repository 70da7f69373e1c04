"""The attention ablation's results: where its runs lie on disk, and the report made from
them (``results.csv``, the Markdown table between its markers, the figure).

``scripts/ablation.py`` trains and scores the runs and calls :func:`report`; see its
docstring for the commands. No number in the table is copied by hand.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_builtin_models as builtin

#: The eight U-Net variants compared, in table order ("none" is the plain U-Net).
VARIANTS = ("none", "se", "eca", "cbam", "gate", "window", "dssa", "global")
LABELS = {"none": "plain", "se": "SE", "eca": "ECA", "cbam": "CBAM", "gate": "gate",
          "window": "window (Swin)", "dssa": "DSSA", "global": "global bottleneck"}
FOREGROUND = [c["name"] for c in builtin.CLASSES[1:]]
START, END = "<!-- ablation-table:start -->", "<!-- ablation-table:end -->"


# ----------------------------------------------------------------------------- files


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV file as dicts of strings (empty list when there is no file)."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (same keys) as CSV, atomically (a killed run leaves no half file)."""
    from napari_medattn.metrics.report import write_csv

    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, list(rows[0]), rows)


def run_path(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / f"{variant}_seed{seed}.csv"


# ----------------------------------------------------------------------------- report


def aggregate(out: Path) -> list[dict]:
    """Per-variant mean and sample SD over seeds, paired differences to the plain U-Net.

    Returns one dict per variant present (table order) with ``n`` seeds, ``<metric>`` and
    ``<metric>_sd`` for Dice per class and mean, HD95 mean and missing, wall time, and
    ``delta_dice`` / ``delta_dice_sd``: the mean and SD over seeds of (variant - plain)
    mean Dice on the same seed, in Dice points (x 100); ``csf_predicted``: runs whose
    held-out segmentations contain any CSF; plus the complexity columns.
    """
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted((out / "runs").glob("*.csv")):
        for row in read_rows(path):
            runs.setdefault(row["variant"], {})[int(row["seed"])] = row
    cost = {r["variant"]: r for r in read_rows(out / "complexity.csv")}
    metrics = ([f"dice_{c}" for c in FOREGROUND] + ["dice_mean", "hd95_mean", "hd95_missing",
               "train_seconds", "final_loss"] + [f"pred_ml_{c}" for c in FOREGROUND]
               + [f"ref_ml_{c}" for c in FOREGROUND])
    plain = runs.get("none", {})
    table = []
    for variant in (v for v in VARIANTS if v in runs):
        seeds = runs[variant]
        entry: dict = {"variant": variant, "n": len(seeds),
                       "seeds": " ".join(map(str, sorted(seeds)))}
        for metric in metrics:
            values = [float(seeds[s][metric]) for s in sorted(seeds)]
            entry[metric], entry[f"{metric}_sd"] = _mean_sd(values)
        paired = [100 * (float(seeds[s]["dice_mean"]) - float(plain[s]["dice_mean"]))
                  for s in sorted(seeds) if s in plain]
        entry["delta_dice"], entry["delta_dice_sd"] = _mean_sd(paired)
        entry["n_paired"] = len(paired)
        # Runs whose segmentations contain the smallest class at all (CSF, 8 % of the brain).
        entry["csf_predicted"] = sum(float(seeds[s][f"pred_ml_{FOREGROUND[0]}"]) > 0
                                     for s in seeds)
        for key in ("params", "gflops", "latency_ms"):
            entry[key] = float(cost[variant][key]) if variant in cost else math.nan
        table.append(entry)
    return table


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof 1) of the finite values; SD nan below two values."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), (float(np.std(finite, ddof=1)) if len(finite) > 1
                                    else math.nan)


def _pm(mean: float, sd: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def markdown_table(table: list[dict]) -> str:
    """The ablation table in Markdown (Dice 0-1, HD95 in mm, paired delta in Dice points)."""
    head = (["U-Net", "seeds"] + [f"Dice {c}" for c in FOREGROUND]
            + ["Dice mean", "Δ vs plain (paired, pts)", "HD95 mean (mm)", "HD95 missing",
               f"runs predicting {FOREGROUND[0]}", "params", "GFLOPs", "latency (ms)",
               "train s/run"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in table:
        delta = "—" if e["variant"] == "none" else _signed(e["delta_dice"], e["delta_dice_sd"])
        cells = ([LABELS[e["variant"]], str(e["n"])]
                 + [_pm(e[f"dice_{c}"], e[f"dice_{c}_sd"], 3) for c in FOREGROUND]
                 + [_pm(e["dice_mean"], e["dice_mean_sd"], 3), delta,
                    _pm(e["hd95_mean"], e["hd95_mean_sd"], 1),
                    f"{e['hd95_missing']:.1f}", f"{e['csf_predicted']} of {e['n']}",
                    f"{e['params'] / 1e3:.0f} k",
                    f"{e['gflops']:.2f}", f"{e['latency_ms']:.0f}",
                    f"{e['train_seconds']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _signed(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:+.1f}"
    return text if math.isnan(sd) else f"{text} ± {sd:.1f}"


def figure(table: list[dict], out: Path, path: Path) -> None:
    """Dice (mean and per class) and HD95 by variant, one point per seed, bar = mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = {e["variant"]: [r for p in sorted((out / "runs").glob(f"{e['variant']}_seed*.csv"))
                           for r in read_rows(p)] for e in table}
    panels = [("dice_mean", "mean foreground Dice"), (f"dice_{FOREGROUND[0]}", "Dice CSF"),
              ("hd95_mean", "HD95 mean (mm, finite)")]
    fig = Figure(figsize=(13, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    names = [LABELS[e["variant"]] for e in table]
    for ax, (metric, title) in zip(axes, panels):
        means = [e[metric] for e in table]
        ax.bar(range(len(table)), means, color="#9ecae1", edgecolor="#3182bd")
        for i, e in enumerate(table):
            values = [float(r[metric]) for r in runs[e["variant"]]]
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(i + np.asarray(jitter), values, color="#08306b", s=14, zorder=3)
        ax.set_xticks(range(len(table)), names, rotation=40, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("U-Net attention ablation (same data, steps and seeds; bar = mean, "
                 "dots = seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def report(args: argparse.Namespace) -> None:
    """Write ``results.csv``, the Markdown table (between the markers) and the figure."""
    table = aggregate(args.out)
    if not table:
        sys.exit(f"No finished runs in {args.out / 'runs'}; run the run step first.")
    write_rows(args.out / "results.csv", table)
    protocol = read_rows(run_path(args.out, table[0]["variant"],
                                  int(table[0]["seeds"].split()[0])))[0]
    loads = sorted({r["load_1min"] for r in read_rows(args.out / "complexity.csv")})
    text = (f"{markdown_table(table)}\n\nProtocol of these runs: channels "
            f"{protocol['channels']}, {protocol['patch']}^3 patches, batch {protocol['batch']}, "
            f"{protocol['steps']} steps, AdamW lr {protocol['lr']} (weight decay "
            f"{protocol['weight_decay']}), {protocol['train_cases']} training cases, "
            f"{protocol['val_cases']} held-out cases. Mean ± sample SD over seeds; Δ: mean ± SD "
            f"over seeds of (variant − plain) mean Dice on the same seed, in Dice points; "
            f"HD95 missing: class/case pairs per run without a finite HD95 (class never "
            f"predicted), left out of the HD95 mean. Latency: one {protocol['patch']}^3 "
            f"window, batch 1, 1 thread, median of 7 rounds in which the variants alternate "
            f"(1-minute load average of the shared CPU meanwhile: {', '.join(loads)}).")
    block = f"{START}\n{text}\n{END}"
    md: Path = args.markdown
    if md.exists():
        current = md.read_text(encoding="utf-8")
        if START not in current or END not in current:
            sys.exit(f"{md} has no {START} ... {END} markers to put the table between.")
        before, rest = current.split(START, 1)
        after = rest.split(END, 1)[1]
        md.write_text(before + block + after, encoding="utf-8")
    else:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(f"# Attention ablation\n\n{block}\n", encoding="utf-8")
    figure(table, args.out, args.figure)
    print(text)
    print(f"wrote {args.out / 'results.csv'}, {md}, {args.figure}")
