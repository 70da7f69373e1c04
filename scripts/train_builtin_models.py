"""Make the built-in brain tissue models (background, CSF, grey matter, white matter).

The models are trained on synthetic cases built from the MNI ICBM152 2009a template that
nilearn ships (:func:`napari_medattn.training.synthesis.synthetic_brain_cases`: each case
deforms the template's tissue labels with a random smooth field and shows them either as
the deformed real T1 or as a label-to-image rendering with a random contrast per tissue,
skull and scalp shells, partial-volume blur, bias field, a random acquisition resolution
and noise), with on-the-fly augmentation on top, by
:func:`napari_medattn.training.loop.train`. Three steps, each rerunnable::

    # 1. synthetic cases -> .npz (needs nilearn; about 1.5 s per case on one core)
    python scripts/train_builtin_models.py generate --out .builtin_data
    # 2. train every model within a time budget (needs torch only; a GPU makes it useful)
    python scripts/train_builtin_models.py train --data .builtin_data --out runs \
        --model dssa-unet-brain-tissue --seconds 420
    # 3. copy the best checkpoints into the package
    python scripts/train_builtin_models.py install runs/dssa-unet-brain-tissue

The shipped weights were made this way on one NVIDIA H100 (see docs/models.md for the
exact commands, seeds and the measured figures).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: Seeds of the synthetic training and held-out cases (different streams).
TRAIN_SEED = 2026
VALIDATION_SEED = 9001
SPACING_MM = (2.0, 2.0, 2.0)
PATCH = (64, 64, 64)
CLASSES = [{"name": "background", "color": "#000000"},
           {"name": "CSF", "color": "#4363d8"},
           {"name": "grey matter", "color": "#3cb44b"},
           {"name": "white matter", "color": "#ffe119"}]
#: Built-in models: architecture and config (sized to stay under 15 MB of float32 weights).
MODELS = {
    "dssa-unet-brain-tissue": ("dssa_unet", {"spatial_dims": 3, "widths": [24, 48, 96, 160]}),
    "attention-unet-brain-tissue": ("unet", {"spatial_dims": 3, "attention": "gate",
                                             "channels": [16, 32, 64, 112, 160]}),
}
#: Contrast-agnostic augmentation on top of the synthesis: geometry, intensity curve,
#: bias, noise, blur and resolution; flips only across the left-right axis (array axis 0
#: in the template's RAS order), since the other flips turn anatomy upside down.
AUGMENTATION = {"transforms": [
    {"name": "affine", "p": 0.3, "rotation_deg": 15.0, "scale": [0.85, 1.2], "translation": 0.0},
    {"name": "noise", "p": 0.2, "std": [0.0, 0.1]},
    {"name": "blur", "p": 0.2, "sigma": [0.5, 1.0]},
    {"name": "contrast", "p": 0.2, "factor": [0.75, 1.25]},
    {"name": "low_resolution", "p": 0.25, "zoom": [0.5, 1.0]},
    {"name": "gamma", "p": 0.4, "gamma": [0.6, 1.6]},
    {"name": "bias_field", "p": 0.2, "strength": 0.3},
    {"name": "flip", "p": 0.5, "axes": [0]},
]}
TRAINING_DATA = (
    "Synthetic brain cases made from the MNI ICBM152 2009a nonlinear symmetric template as "
    "nilearn ships it (T1 and grey/white-matter probability maps, 2 mm; tissue labels by "
    "napari_medattn.training.synthesis.mni152_tissue_labels, CSF = brain mask minus GM and "
    "WM), by synthetic_brain_cases(resolution=2, synthetic_fraction=0.6, deformation_mm=6, "
    "default Degradation) with seed {seed}, cases 0-{last}: each deforms the labels by a "
    "random smooth field and shows them as the deformed real T1 or as a label-to-image "
    "rendering (random Gaussian intensity per tissue, skull and scalp shells, blur, bias "
    "field, random acquisition resolution, noise). Images stored 8-bit per case (min to "
    "99.9th percentile) between generation and training. No scan of any person was used. "
    "Template (c) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, free for use "
    "with attribution.")


# ----------------------------------------------------------------------------- generate


def generate(out: Path, n_train: int, n_val: int) -> None:
    """Write ``train_NNN.npz`` and ``val_NNN.npz`` synthetic cases into ``out``."""
    from napari_medattn.training.synthesis import synthetic_brain_cases

    out.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("val", n_val, VALIDATION_SEED), ("train", n_train, TRAIN_SEED)):
        started = time.perf_counter()
        cases = synthetic_brain_cases(count, seed=seed, resolution=2, synthetic_fraction=0.6,
                                      deformation_mm=6.0)
        for number, (image, labels) in enumerate(cases):
            data = np.asarray(image.data, dtype=np.float32)
            low, high = float(data.min()), float(np.percentile(data, 99.9))
            quantised = np.round(np.clip((data - low) / (high - low), 0, 1) * 255).astype(np.uint8)
            np.savez_compressed(out / f"{split}_{number:03d}.npz", image=quantised,
                                low=low, high=high, label=np.asarray(labels.data, np.uint8),
                                affine=image.affine, kind=image.meta["synthesis"]["kind"],
                                name=f"{split} {seed}-{number}")
        print(f"{count} {split} cases in {time.perf_counter() - started:.0f} s", flush=True)


def load_split(folder: Path, split: str) -> list:
    """The ``split`` cases of ``folder`` as training Cases (1-channel float32 images)."""
    from napari_medattn.io.volume import Volume
    from napari_medattn.training.datasets import Case

    cases = []
    for path in sorted(folder.glob(f"{split}_*.npz")):
        with np.load(path) as f:
            low, high = float(f["low"]), float(f["high"])
            image = (f["image"].astype(np.float32) / 255.0) * (high - low) + low
            name = f"{f['name']} ({f['kind']})"
            cases.append(Case(name, Volume(image[None], f["affine"], "MR", {"name": name}),
                              Volume(f["label"], f["affine"].copy(), "SEG", {})))
    if not cases:
        sys.exit(f"No {split}_*.npz cases in {folder}; run the generate step first.")
    return cases


# ----------------------------------------------------------------------------- train


def _train(name: str, train_cases, val_cases, out_dir: Path, *, epochs: int,
           steps_per_epoch: int, batch_size: int, seed: int, device: str, workers: int,
           amp: bool = True, lr: float = 2e-3, init: str | None = None, progress=None):
    from napari_medattn.training.config import TrainingConfig
    from napari_medattn.training.loop import train

    architecture, config = MODELS[name]
    last = len(train_cases) - 1
    run = TrainingConfig(
        architecture, config, patch_size=PATCH, spacing=SPACING_MM, orientation="RAS",
        normalization={"scheme": "zscore"}, modality="MR", batch_size=batch_size,
        epochs=epochs, steps_per_epoch=steps_per_epoch, lr=lr, weight_decay=1e-4,
        seed=seed, augment=AUGMENTATION, initial_weights=init, amp=amp)
    return train(
        run, train_cases, classes=CLASSES, out_dir=out_dir, device=device,
        val_cases=val_cases, num_workers=workers, progress=progress, progress_bar=False,
        card_fields={
            "name": name,
            "training_data": TRAINING_DATA.format(seed=TRAIN_SEED, last=last),
            "training_procedure": f"scripts/train_builtin_models.py train --model {name} "
                                  f"--lr {lr:g} (seed {seed})"
                                  + (f", continued from the weights of {init}" if init else "")
                                  + ".",
            "evaluated_on": (
                f"{len(val_cases)} held-out synthetic cases ({', '.join(c.name for c in val_cases)}"
                f"): renderings of the SAME MNI152 template as the training data, with other "
                f"deformations and contrasts (seed {VALIDATION_SEED}), not real scans of other "
                f"people; segmented with napari_medattn.inference.segment as this card "
                f"prescribes (float32, overlap 0.5) and scored against their labels on their "
                f"2 mm grids. Dice 0-1, HD95 in mm (mean over classes and cases)."),
            "license": "BSD-3-Clause",
            "intended_use": "Research, teaching and demonstration of attention models in "
                            "napari: brain tissue classes on MR of any contrast at about 2 mm. "
                            "Research use only; not for clinical use.",
        })


def run_training(args: argparse.Namespace) -> None:
    """Probe the speed, size the run to ``--seconds``, train, copy outputs to ``--out``."""
    import torch

    from napari_medattn.models.registry import load_model
    from napari_medattn.training.loop import validate

    train_cases = load_split(args.data, "train")
    val_cases = load_split(args.data, "val")
    print(f"{args.model}: {len(train_cases)} training and {len(val_cases)} validation cases; "
          f"device {args.device}", flush=True)
    budget_start = time.perf_counter()
    # Probe: a short run measures seconds per step (steps 5-16, past the warm-up) and
    # seconds per validation, so the real run's cosine schedule fits the budget.
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = _train(args.model, train_cases, [], Path(tmp) / "probe", epochs=1,
                       steps_per_epoch=16, batch_size=args.batch_size, seed=args.seed,
                       device=args.device, workers=args.workers, amp=not args.float32,
                       lr=args.lr, init=args.init,
                       progress=lambda p: stamps.append(time.perf_counter()))
        step_s = (stamps[15] - stamps[4]) / 11
        module, card = load_model(probe.last, device=args.device)
        started = time.perf_counter()
        validate(module, card, val_cases, device=args.device)
        validation_s = time.perf_counter() - started
    left = args.seconds - (time.perf_counter() - budget_start)
    epochs = args.epochs
    steps = int(0.85 * (left - epochs * validation_s) / (epochs * step_s))
    if steps < 5:
        sys.exit(f"{args.model}: {step_s:.3f} s per step and {validation_s:.1f} s per "
                 f"validation leave too few steps in {args.seconds} s.")
    print(f"{args.model}: {step_s:.3f} s/step, {validation_s:.1f} s/validation -> {epochs} "
          f"epochs x {steps} steps", flush=True)

    def report(p):
        if p["phase"] == "validation":
            print(f"{args.model} epoch {p['epoch']}: val Dice {p['val_dice']:.4f} "
                  f"(CSF {p['val_dice_CSF']:.3f}, GM {p['val_dice_grey matter']:.3f}, "
                  f"WM {p['val_dice_white matter']:.3f}), HD95 {p['val_hd95_mm']:.2f} mm, "
                  f"{time.perf_counter() - budget_start:.0f} s", flush=True)

    run_dir = args.runs / args.model
    result = _train(args.model, train_cases, val_cases, run_dir, epochs=epochs,
                    steps_per_epoch=steps, batch_size=args.batch_size, seed=args.seed,
                    device=args.device, workers=args.workers, amp=not args.float32,
                    lr=args.lr, init=args.init, progress=report)
    print(f"{args.model}: losses {[round(h['loss'], 4) for h in result.history]}; best "
          f"epoch {result.card.metrics['epoch']}; {time.perf_counter() - budget_start:.0f} s; "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
          if torch.cuda.is_available() else "", flush=True)
    if args.out is not None:
        target = args.out / args.model
        target.mkdir(parents=True, exist_ok=True)
        for source in (result.best / "weights.safetensors", result.best / "card.json",
                       run_dir / "history.json", run_dir / "curves.png"):
            shutil.copy2(source, target / source.name)


# ----------------------------------------------------------------------------- figures


def sample_scans() -> dict:
    """The scans the built-in models are looked at on: name -> Volume."""
    from importlib.resources import files

    import nibabel

    from napari_medattn.io import read_volume

    samples = files("napari_medattn") / "sample_data"
    return {
        "nibabel anatomical.nii (T1, 2 mm)": read_volume(
            Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii", modality="MR"),
        "dipy aniso_vox (b0/T2-like, 4x4x5 mm)": read_volume(samples / "dipy_aniso_vox.nii.gz"),
        "MNI152 2009a T1 (1 mm, the template itself)": read_volume(samples / "mni152_t1.nii.gz"),
    }


def figures(out_dir: Path, models: list[str]) -> None:
    """Segment the sample scans with each model; save napari screenshots with the labels.

    One PNG per model (``builtin_<name>.png``): a column per scan, two axial levels, each
    a napari canvas screenshot (image and labels layers as the plugin adds them,
    radiological convention), with the class fractions of the whole scan in the title.
    """
    import napari
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from napari_medattn.display.layers import volume_layer_data
    from napari_medattn.inference import segment
    from napari_medattn.launch import needs_virtual_display, start_virtual_display
    from napari_medattn.models.registry import load_model
    from napari_medattn.widgets.segment import class_colormap

    display = start_virtual_display() if needs_virtual_display() else None
    scans = sample_scans()
    from qtpy.QtWidgets import QApplication

    # A shown window (on the virtual display when there is no screen): a hidden one
    # renders a black canvas.
    viewer = napari.Viewer(show=True)
    viewer.window.resize(700, 700)
    try:
        for name in models:
            module, card = load_model(name)
            figure = Figure(figsize=(4 * len(scans), 8.6), dpi=100)
            FigureCanvasAgg(figure)
            axes = figure.subplots(2, len(scans), squeeze=False)
            for column, (title, volume) in enumerate(scans.items()):
                started = time.perf_counter()
                labels = segment(volume, module, card, device="cpu").labels
                seconds = time.perf_counter() - started
                fractions = np.bincount(labels.data.ravel(), minlength=card.num_classes)
                fractions = fractions / fractions.sum()
                viewer.layers.clear()
                data, kwargs, _ = volume_layer_data(volume, "image")
                viewer.add_image(data, **kwargs)
                data, kwargs, _ = volume_layer_data(labels, "labels")
                kwargs["metadata"] = {}
                viewer.add_labels(data, colormap=class_colormap(card), opacity=0.45,
                                  **{k: kwargs[k] for k in ("name", "scale", "translate")})
                viewer.dims.ndisplay = 2
                viewer.dims.order = (0, 1, 2)
                brain = np.argwhere(data > 0)
                low, high = np.percentile(brain[:, 0], [35, 65]).astype(int)
                for row, index in enumerate((high, low)):
                    viewer.dims.set_current_step(0, int(index))
                    viewer.reset_view()
                    for _ in range(5):
                        QApplication.processEvents()
                    shot = viewer.screenshot(canvas_only=True, flash=False)
                    axes[row, column].imshow(shot)
                    axes[row, column].set_axis_off()
                axes[0, column].set_title(
                    f"{title}\n" + ", ".join(f"{short} {f:.0%}" for short, f in
                                              zip(("bg", "CSF", "GM", "WM"), fractions)) +
                    f"\n({seconds:.0f} s on a 2-core CPU)", fontsize=9)
            figure.legend(handles=[Patch(color=c.color, label=c.name)
                                   for c in card.classes[1:]], loc="lower center", ncol=3)
            figure.suptitle(f"{name}: axial slices, radiological view (patient right on "
                            f"screen left, anterior up)")
            figure.tight_layout(rect=(0, 0.04, 1, 1))
            out_dir.mkdir(parents=True, exist_ok=True)
            figure.savefig(out_dir / f"builtin_{name}.png")
            print(f"wrote {out_dir / f'builtin_{name}.png'}")
    finally:
        viewer.close()
        if display is not None:
            display.stop()


# ----------------------------------------------------------------------------- install


def install(run: Path) -> None:
    """Copy a trained model folder (weights + card) into the package's weights/."""
    from napari_medattn.models.card import ModelCard
    from napari_medattn.models.registry import BUILTIN_DIR, load_model

    card = ModelCard.read(run / "card.json")
    load_model(run)  # refuses a damaged folder before anything is copied
    target = BUILTIN_DIR / card.name
    target.mkdir(parents=True, exist_ok=True)
    for name in ("weights.safetensors", "card.json"):
        shutil.copy2(run / name, target / name)
    print(f"installed {card.name} in {target}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    gen = sub.add_parser("generate", help="write synthetic cases as .npz")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--cases", type=int, default=64)
    gen.add_argument("--val-cases", type=int, default=4)
    tr = sub.add_parser("train", help="train one built-in model within a time budget")
    tr.add_argument("--data", type=Path, required=True)
    tr.add_argument("--model", choices=sorted(MODELS), required=True)
    tr.add_argument("--runs", type=Path, default=Path("runs"), help="run folders")
    tr.add_argument("--out", type=Path, default=None, help="copy best weights, card, curves")
    tr.add_argument("--seconds", type=float, default=420.0, help="wall-clock budget")
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--workers", type=int, default=4)
    tr.add_argument("--float32", action="store_true", help="no bfloat16 autocast on CUDA")
    tr.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    tr.add_argument("--init", help="continue from this model's weights (a built-in name, "
                                   "model folder or weights file of the same architecture)")
    fig = sub.add_parser("figures", help="napari screenshots of the models on sample scans")
    fig.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    fig.add_argument("--model", action="append", choices=sorted(MODELS))
    ins = sub.add_parser("install", help="copy a trained model into the package")
    ins.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    if args.step == "generate":
        generate(args.out, args.cases, args.val_cases)
    elif args.step == "train":
        run_training(args)
    elif args.step == "figures":
        figures(args.out, args.model or sorted(MODELS))
    else:
        install(args.run)


if __name__ == "__main__":
    main()
