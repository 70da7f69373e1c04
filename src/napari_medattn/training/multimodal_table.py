"""The 15-subset table of a multimodal comparison, from the runs of
``scripts/train_multimodal.py``, and the shipped DMAF model with its card.

Each run (one model variant, one seed) is a ``<variant>_seed<k>.json`` in the runs folder
holding its training facts and per-case rows (``test`` and ``val``: Dice and HD95 of WT, TC
and ET for each of the 15 subsets). Statistics: for each seed the mean over the held-out
cases, then the mean and standard deviation (``ddof=1``) of those over seeds.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from napari_medattn.errors import ReadError
from napari_medattn.inference.multimodal import MULTIMODAL_TASK
from napari_medattn.io.atomic import write_text_atomically
from napari_medattn.models.brats import BRATS_LABELS, LABEL_COLOURS, REGIONS

__all__ = ["load_runs", "subset_table", "ablation_table", "summarise_runs", "ship_dmaf",
           "PAGE_MARKERS"]

#: The page's table lives between these lines; everything else on the page is kept.
PAGE_MARKERS = ("<!-- multimodal-table:start -->", "<!-- multimodal-table:end -->")
MAIN = ("dmaf", "region", "early")
NAMES = {"dmaf": "DMAF", "region": "region fusion", "early": "early fusion"}


def load_runs(folder: Path) -> dict[str, list[dict]]:
    """Runs by variant name, each list sorted by seed."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(Path(folder).glob("*_seed*.json")):
        variant, seed = path.stem.rsplit("_seed", 1)
        facts = json.loads(path.read_text())
        facts["seed"], facts["variant"] = int(seed), variant
        runs.setdefault(variant, []).append(facts)
    if not runs:
        raise ReadError(f"{folder} holds no runs (<variant>_seed<k>.json).")
    return {k: sorted(v, key=lambda f: f["seed"]) for k, v in runs.items()}


def _per_seed(run: dict, metric: str, subset: str | None, split: str = "test") -> float:
    values = [r[metric] for r in run[split] if subset is None or r["subset"] == subset]
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _cell(values: list[float], scale: float, digits: int = 1) -> str:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "-"
    mean = scale * np.mean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * np.std(values, ddof=1):.{digits}f}"


def _subsets(runs: dict[str, list[dict]]) -> list[str]:
    first = next(iter(runs.values()))[0]["test"]
    return list(dict.fromkeys(r["subset"] for r in first))


def subset_table(runs: dict[str, list[dict]], metric: str, scale: float = 100.0) -> str:
    """Markdown: one row per subset plus the mean of the 15, a column per main variant and
    region; cells ``mean ± SD`` over seeds of ``metric`` (``dice`` or ``hd95``)."""
    variants = [v for v in MAIN if v in runs]
    head = "| subset | " + " | ".join(f"{NAMES[v]} {r}" for v in variants for r in REGIONS)
    lines = [head + " |", "| --- |" + " --- |" * (len(variants) * len(REGIONS))]
    for subset in [*_subsets(runs), None]:
        cells = [_cell([_per_seed(run, f"{metric}_{r}", subset) for run in runs[v]], scale)
                 for v in variants for r in REGIONS]
        name = subset if subset else "**mean of 15**"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_table(runs: dict[str, list[dict]]) -> str:
    """Markdown: mean of the 15 subsets (Dice %, mean ± SD over seeds) of DMAF and of every
    ablation variant that ran, with the number of seeds."""
    variants = ["dmaf"] + sorted(v for v in runs if v.startswith("dmaf-"))
    lines = ["| variant | seeds | WT | TC | ET |", "| --- | --- | --- | --- | --- |"]
    for v in variants:
        if v in runs:
            cells = [_cell([_per_seed(run, f"dice_{r}", None) for run in runs[v]], 100.0)
                     for r in REGIONS]
            lines.append(f"| {v} | {len(runs[v])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(runs: dict[str, list[dict]]) -> str:
    rows = [r for variant in runs.values() for run in variant for r in run["test"]]
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _protocol(runs: dict[str, list[dict]]) -> str:
    lines = []
    for v, variant_runs in runs.items():
        facts = variant_runs[0]
        cpu = np.mean([f["cpu_s"] for f in variant_runs])
        line = (f"- {v}: {facts['parameters']:,} parameters, {facts['steps']} steps, "
                f"{cpu:.0f} CPU-s per seed (mean), seeds "
                f"{', '.join(str(f['seed']) for f in variant_runs)}")
        if all("loss_curve" in f for f in variant_runs):  # runs before 2026-12-03 lack it
            # The segmentation loss alone (no distillation), mean over seeds per tenth.
            curve = np.mean([f["loss_curve"] for f in variant_runs], axis=0)
            line += f"; training Dice+CE loss by tenth of the run " \
                    f"{' '.join(f'{c:.2f}' for c in curve)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _page_block(runs: dict[str, list[dict]]) -> str:
    blocks = ["Dice in % (mean ± SD over seeds of each seed's mean over the held-out cases):",
              "", subset_table(runs, "dice"),
              "HD95 in mm (same statistics; a case whose prediction or reference of the region "
              "is empty has no HD95 and is left out):", "", subset_table(runs, "hd95", 1.0),
              "Runs (written by the script):", "", _protocol(runs)]
    if any(v.startswith("dmaf-") for v in runs):
        blocks += ["Ablation (Dice %, mean of the 15 subsets):", "", ablation_table(runs)]
    return "\n".join(blocks)


def _write_page(page: Path, block: str) -> None:
    text = page.read_text(encoding="utf-8")
    start, end = PAGE_MARKERS
    if start not in text or end not in text:
        raise ReadError(f"{page} has no {start} ... {end} lines to put the table between.")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    write_text_atomically(page, f"{before}{start}\n{block}{end}{after}")


def summarise_runs(runs_folder: Path, out: Path, page: Path | None, ship: Path | None,
                   spacing_mm) -> int:
    """Write the CSV and tables into ``out``, the table block into ``page``, ship the best
    DMAF seed (by validation mean WT Dice) into ``ship``, print ``FIGURE`` lines."""
    runs = load_runs(runs_folder)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "multimodal_subsets.csv", _csv(runs))
    block = _page_block(runs)
    write_text_atomically(out / "multimodal_table.md", block)
    if page is not None:
        _write_page(page, block)
    print(block)
    for v in runs:
        for r in REGIONS:
            values = [_per_seed(run, f"dice_{r}", None) for run in runs[v]]
            print(f"FIGURE {v}_mean15_dice_{r} {100 * np.mean(values):.1f} %")
    if ship is not None and "dmaf" in runs:
        best = max(runs["dmaf"], key=lambda f: _per_seed(f, "dice_WT", None, "val"))
        means = {f"{v}_mean15_dice_{r}": round(float(np.mean(
            [_per_seed(run, f"dice_{r}", None) for run in runs[v]])), 4)
            for v in MAIN if v in runs for r in REGIONS}
        ship_dmaf(runs_folder / f"dmaf_seed{best['seed']}.safetensors", best, means,
                  ship, spacing_mm)
        print(f"FIGURE shipped_dmaf_seed {best['seed']} seed")
    return 0


#: The BraTS classes in class index order (background, labels 1, 2, 4) with their colours.
CLASSES = [("background", "#000000"),
           *((BRATS_LABELS[v], LABEL_COLOURS[v]) for v in sorted(BRATS_LABELS))]


def ship_dmaf(weights: Path, run: dict, means: dict, folder: Path, spacing_mm) -> Path:
    """Save the DMAF run's weights as the model ``folder.name`` with its card."""
    from safetensors.torch import load_file

    from napari_medattn.models import create
    from napari_medattn.models.card import ModelCard
    from napari_medattn.models.registry import save_model

    module = create(run["architecture"], **run["config"])
    module.load_state_dict(load_file(str(weights)))
    protocol = run["protocol"]
    own = {f"dice_{r}_mean15": round(_per_seed(run, f"dice_{r}", None), 4) for r in REGIONS}
    card = ModelCard(
        name=folder.name, task=MULTIMODAL_TASK, architecture=run["architecture"],
        config=run["config"], classes=[{"name": n, "color": c} for n, c in CLASSES],
        modality="MR", patch_size=(96, 96, 96), spacing=tuple(spacing_mm), orientation="RAS",
        normalization={"scheme": "zscore"}, in_channels=len(run["config"]["modalities"]),
        training_data=(
            f"Synthetic BraTS-like cases only: {protocol['train_cases']} whole heads made by "
            "napari_medattn.training.multimodal_synthesis.synthetic_multimodal_case (seeds "
            f"0-{protocol['train_cases'] - 1}, 2 mm): the MNI152 2009 template's anatomy as "
            "nilearn ships it, deformed by a random smooth field, with one glioma-like tumour "
            "(necrotic core, enhancing rim, oedema) rendered as T1, T1ce, T2 and FLAIR. "
            "Synthetic tumours in one template's anatomy: no scan of any patient; figures on "
            "this data say nothing about real BraTS scans. Template (c) 1993-2009 Louis "
            "Collins, McConnell Brain Imaging Centre, free for use with attribution."),
        training_procedure=(
            f"scripts/train_multimodal.py run (seed {run['seed']}): {run['steps']} Adam steps "
            f"(lr {protocol['lr']}), batch {protocol['batch']} random {protocol['crop']}-voxel "
            "cubes (2/3 centred on a tumour voxel), flips, missing modalities drawn with "
            f"imbalanced rates {list(protocol['missing_rates'])} (t1, t1ce, t2, flair), "
            "soft Dice + cross-entropy, relation and prototype self-distillation from the "
            f"same net on all four modalities (weight {protocol['distillation_weight']}), "
            f"per-modality training monitor; {run['cpu_s']:.0f} CPU-s on one thread of a "
            "shared 2-core CPU: a short CPU training. Chosen among the DMAF seeds by mean WT "
            "Dice over the 15 subsets on validation cases (seeds 800000+)."),
        metrics={**own, **means},
        evaluated_on=(
            "Held-out synthetic cases (seeds 900000+: anatomy deformations and tumours never "
            f"seen in training), a {protocol['eval_crop']}-voxel cube around the tumour, each "
            "of the 15 modality subsets; dice_*_mean15 are this seed's means over the 15 "
            "subsets, <model>_mean15_dice_* the means over all seeds of each model of the "
            "same run (see docs/multimodal.md)."),
        license="BSD-3-Clause",
        intended_use="Research and demonstration of missing-modality fusion on brain MR "
                     "(any subset of T1, T1ce, T2, FLAIR). Not for clinical use.")
    return save_model(module, card, folder)
