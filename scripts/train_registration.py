"""Train the learned registration models (TransMorph-style and VoxelMorph-style) on CPU.

Synthetic data in SynthMorph's spirit on the MNI ICBM152 2009a template that nilearn ships
(nothing is downloaded): a pool of synthetic brains, each the template's tissue labels
deformed by a random smooth field and shown either as a label-to-image rendering with a
random contrast per tissue (skull and scalp shells, blur, bias field, random acquisition
resolution, noise) or as the deformed real T1
(:func:`napari_medattn.training.synthesis.synthetic_brain_cases`); every fourth brain is
also shown as the plain deformed T1 with a random gamma (no skull), its "twin".

A training pair is one brain (fixed) against the same anatomy (its twin, or with
probability ``CONTRAST`` a random non-monotonic intensity map of it: cross-contrast pairs)
moved by a known random diffeomorphism ``exp(w)``
(:func:`~napari_medattn.training.tensor_ops.smooth_field` as a velocity, integrated by the
registration package's own scaling and squaring). The loss is SynthMorph's
(:func:`label_loss`): one minus the soft Dice of the fixed tissue labels against the moving
labels carried through the predicted transform, plus ``SMOOTHNESS`` times the mean squared
velocity gradient; the velocity error against the true ``-w`` is logged (against what
predicting no motion scores), not trained on. An earlier version trained on that error
alone and never left the level of predicting no motion (about 800 steps): most of it is
the motion of flat regions no image shows, noise that drowns the part a network can learn,
where the label loss only speaks at tissue borders. Each step trains on one random 64^3
crop, the loss at every second voxel.

Three steps, each rerunnable (one thread, niced)::

    nice -n 10 .venv/bin/python scripts/train_registration.py pool --out /tmp/reglearn/pool.npz
    nice -n 10 .venv/bin/python scripts/train_registration.py train --pool /tmp/reglearn/pool.npz \\
        --model transmorph-brain-2mm --cpu-minutes 20
    nice -n 10 .venv/bin/python scripts/train_registration.py evaluate \\
        --model transmorph-brain-2mm voxelmorph-brain-2mm

``train`` writes the model folder (weights, card, ``training_log.json``, ``training.png``)
under ``--out`` (default ``src/napari_medattn/weights/``); ``evaluate`` scores the installed
models on held-out pairs (seed
:data:`HELD_OUT_SEED`, never used in training) against the classical engine and writes the
figures into its card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_medattn.io.volume import Volume
from napari_medattn.models import create
from napari_medattn.models.card import NOT_CLINICAL, ModelCard
from napari_medattn.models.registry import BUILTIN_DIR, load_model, save_model
from napari_medattn.registration.engine import normalise_intensities
from napari_medattn.registration.learned import network_velocity
from napari_medattn.registration.sampling import (
    exponentiate,
    grid_points,
    mm_to_normalised,
    sample,
)
from napari_medattn.training.synthesis import TISSUE_LABELS

#: Seeds of the training pool and of the held-out pairs (different streams).
POOL_SEED = 1717
HELD_OUT_SEED = 9017
POOL_SIZE = 40
DEFORMATION_MM = 6.0
CROP = 64
#: The loss is computed (and the velocity integrated) at every STRIDE-th voxel of the
#: crop: eight times cheaper for a smooth field, and the CPU is the bottleneck.
STRIDE = 2
SMOOTHNESS = 1.0
LEARNING_RATE = 2e-3
#: Probability that the moving crop gets a random (non-monotonic) contrast.
CONTRAST = 0.5
STEPS_PER_LOG = 10

MODELS = {
    "transmorph-brain-2mm": ("transmorph", {"in_channels": 2, "channels": [12, 24, 48],
                                            "num_heads": [2, 3, 6], "window_size": 4,
                                            "shrink": 4}),
    "voxelmorph-brain-2mm": ("voxelmorph", {"in_channels": 2, "channels": [16, 32, 32, 32],
                                            "shrink": 4}),
}
CLASSES = [{"name": "background", "color": "#000000"}, {"name": "CSF", "color": "#4363d8"},
           {"name": "grey matter", "color": "#3cb44b"},
           {"name": "white matter", "color": "#ffe119"}]


# ---------------------------------------------------------------------------- the pool


def make_pool(out: Path, size: int = POOL_SIZE, seed: int = POOL_SEED) -> None:
    """Synthetic brains (images normalised as the engine does, labels) in one .npz."""
    from napari_medattn.training.synthesis import (
        apply_deformation,
        mni152_tissue_labels,
        synthetic_brain_cases,
    )

    t1, _ = mni152_tissue_labels(2)
    images, labels, kinds = [], [], []
    for case, (image, label) in enumerate(synthetic_brain_cases(
            size, seed, synthetic_fraction=0.6, deformation_mm=DEFORMATION_MM)):
        images.append(normalise_intensities(np.asarray(image.data, np.float32)))
        labels.append(np.asarray(label.data, np.uint8))
        kinds.append(image.meta["synthesis"]["kind"])
        if case % 4 == 0:
            rng = np.random.default_rng((seed, case, 1))
            plain = np.asarray(apply_deformation(t1, image.meta["displacement_mm"]).data)
            plain = np.clip(plain / plain.max(), 0, 1) ** rng.uniform(0.7, 1.4)
            images.append(normalise_intensities(plain.astype(np.float32)))
            labels.append(labels[-1])
            kinds.append("plain T1")
        print(f"case {case}: {kinds[-1]}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=np.stack(images), labels=np.stack(labels),
                        kinds=np.array(kinds), affine=t1.affine)


# ---------------------------------------------------------------------------- training


def random_contrast(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A random, possibly non-monotonic intensity map of a [0, 1] image (piecewise linear
    through six random levels): the same anatomy in another contrast."""
    levels = torch.as_tensor(rng.uniform(0, 1, 6), dtype=image.dtype)
    position = image.clamp(0, 1) * 5
    index = position.floor().clamp(max=4).long()
    weight = position - index
    return levels[index] * (1 - weight) + levels[index + 1] * weight


@dataclasses.dataclass
class Pair:
    """One training pair on a crop (see :func:`training_pair`).

    ``fixed`` and ``moving`` are ``(crop,) * 3`` images; ``target`` the velocity the
    network should find (mm, LPS components, at every STRIDE-th voxel of the crop:
    the grid ``coarse``); ``motion`` the displacement (mm, on ``coarse``) of the known
    diffeomorphism the moving crop reads the fixed anatomy through; ``brain`` the index of
    the fixed brain in the pool; ``affine`` the crop's grid."""

    fixed: torch.Tensor
    moving: torch.Tensor
    target: torch.Tensor
    motion: torch.Tensor
    brain: int
    affine: np.ndarray

    @property
    def coarse(self) -> np.ndarray:
        return self.affine @ np.diag([STRIDE, STRIDE, STRIDE, 1.0])


def training_pair(images: torch.Tensor, twins: dict, start: np.ndarray, affine: np.ndarray,
                  rng: np.random.Generator, generator: torch.Generator, crop: int = CROP,
                  contrast: float = CONTRAST) -> Pair:
    """One pair on a ``crop``-voxel cube at ``start``: the fixed crop, and a moving crop
    that shows the same anatomy (its twin rendering, or with probability ``contrast`` a
    random contrast of it) moved by a known random diffeomorphism ``exp(w)``. The moving
    scan reads the fixed one at ``exp(w)(y)``, so fixed -> moving is ``exp(-w)``: the
    target velocity is ``-w``."""
    from napari_medattn.training.tensor_ops import smooth_field

    k = int(rng.integers(len(images)))
    box = tuple(slice(s, s + crop) for s in start)
    local = crop_affine(affine, start)
    source = images[twins[k]] if k in twins and rng.random() < 0.5 else images[k]
    if rng.random() < contrast:
        source = random_contrast(source, rng)
    coarse = local @ np.diag([STRIDE, STRIDE, STRIDE, 1.0])
    coarse_shape = (crop // STRIDE,) * 3
    coarse_mm = float(np.linalg.norm(coarse[:3, :3], axis=0).mean())
    w = smooth_field(generator, 1, coarse_shape, control_spacing=float(rng.uniform(16, 28))
                     / coarse_mm, magnitude=float(rng.uniform(2, 10)) / coarse_mm,
                     device="cpu")[0]
    w = torch.einsum("ij,j...->i...", torch.as_tensor(coarse[:3, :3], dtype=w.dtype), w)
    to_coarse = torch.as_tensor(mm_to_normalised(coarse, coarse_shape), dtype=torch.float32)
    u = exponentiate(w, grid_points(coarse, coarse_shape, torch.device("cpu")), to_coarse)
    full = grid_points(local, (crop,) * 3, torch.device("cpu"))
    moved = full + sample(u, to_coarse, full, padding="border").permute(1, 2, 3, 0)
    to_full = torch.as_tensor(mm_to_normalised(affine, tuple(images.shape[1:])),
                              dtype=torch.float32)
    moving = sample(source[None], to_full, moved)[0]
    return Pair(images[k][box], moving, -w, u, k, local)


def label_loss(velocity: torch.Tensor, pair: Pair, one_hot: torch.Tensor,
               affine: np.ndarray) -> torch.Tensor:
    """SynthMorph's loss: 1 - mean soft Dice (CSF, GM, WM) of the fixed crop's labels
    against the moving labels carried through the predicted transform ``exp(velocity)``
    (fixed mm -> moving mm), at every STRIDE-th voxel.

    The moving labels are the fixed brain's seen through the known motion, so a fixed
    point ``x`` lands at ``exp(velocity)(x) + motion(...)`` in the brain's own labels
    (``one_hot``, ``(classes, *pool grid)``, grid ``affine``): read there directly, one
    interpolation instead of two. The gradient lives at tissue borders, whatever the
    contrast: it is what lets the net learn where the supervised velocity error (mostly
    the unidentifiable motion of flat regions) had not left its plateau."""
    coarse, shape = pair.coarse, tuple(velocity.shape[1:])
    points = grid_points(coarse, shape, torch.device("cpu"))
    to_coarse = torch.as_tensor(mm_to_normalised(coarse, shape), dtype=torch.float32)
    to_pool = torch.as_tensor(mm_to_normalised(affine, tuple(one_hot.shape[1:])),
                              dtype=torch.float32)
    moved = points + exponentiate(velocity, points, to_coarse).permute(1, 2, 3, 0)
    moved = moved + sample(pair.motion, to_coarse, moved, padding="border").permute(1, 2, 3, 0)
    warped = sample(one_hot, to_pool, moved)[1:]
    reference = sample(one_hot, to_pool, points)[1:]
    overlap = (warped * reference).flatten(1).sum(1)
    total = (warped + reference).flatten(1).sum(1)
    return 1 - (2 * overlap / total.clamp(min=1e-6)).mean()


def smoothness(velocity: torch.Tensor, spacing: float) -> torch.Tensor:
    """Mean squared first differences of a velocity ``(3, ...)`` mm, per mm (the same
    diffusion penalty as the classical engine's)."""
    return sum((torch.diff(velocity, dim=a + 1) / spacing).square().mean() for a in range(3))


def crop_affine(affine: np.ndarray, start: np.ndarray) -> np.ndarray:
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return shifted


def train(pool_path: Path, name: str, cpu_minutes: float, wall_minutes: float, seed: int,
          out: Path, smoothness_weight: float = SMOOTHNESS) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = np.load(pool_path)
    images = torch.from_numpy(pool["images"])
    labels = pool["labels"]
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), len(CLASSES))
    one_hot = one_hot.permute(0, 4, 1, 2, 3).float()
    # Renderings of the same anatomy (a brain and its plain T1 copy) are each other's twins.
    twins = {k: k + d for k in range(len(labels)) for d in (-1, 1)
             if 0 <= k + d < len(labels) and np.array_equal(labels[k], labels[k + d])}
    affine = pool["affine"]
    shape = np.asarray(images.shape[1:])
    spacing = float(np.linalg.norm(affine[:3, :3], axis=0).mean())
    generator = torch.Generator().manual_seed(seed)
    architecture, config = MODELS[name]
    net = create(architecture, **config).train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=1e-5)
    history, window = [], []
    started, wall = time.process_time(), time.perf_counter()
    step = 0

    def spent() -> float:
        """Fraction of the budget used: CPU time, or wall time on a crowded machine."""
        return max((time.process_time() - started) / (60 * cpu_minutes),
                   (time.perf_counter() - wall) / (60 * wall_minutes))

    while (fraction := spent()) < 1:
        # Cosine decay over the budget (the number of steps it allows is not known ahead).
        for group in optimiser.param_groups:
            group["lr"] = LEARNING_RATE * 0.5 * (1 + np.cos(np.pi * fraction))
        start = np.array([rng.integers(0, n - CROP + 1) for n in shape])
        pair = training_pair(images, twins, start, affine, rng, generator)
        velocity = network_velocity(net, pair.fixed, pair.moving, pair.affine)[
            :, ::STRIDE, ::STRIDE, ::STRIDE]
        dice = label_loss(velocity, pair, one_hot[pair.brain], affine)
        loss = dice + smoothness_weight * smoothness(velocity, STRIDE * spacing)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        # The velocity error against the known motion is not trained on (see label_loss),
        # but it is the figure that says whether the net beats predicting no motion.
        error = (velocity.detach() - pair.target).square().sum(0).mean()
        with torch.no_grad():  # the label loss of predicting no motion, for comparison
            still = label_loss(torch.zeros_like(velocity), pair, one_hot[pair.brain], affine)
        window.append((loss.item(), error.item(), pair.target.square().sum(0).mean().item(),
                       dice.item(), still.item()))
        if step % STEPS_PER_LOG == 0:
            mean = np.mean(window, axis=0)
            history.append({"step": step, "loss": float(mean[0]), "velocity_mse": float(mean[1]),
                            "zero_prediction_mse": float(mean[2]), "label_loss": float(mean[3]),
                            "zero_prediction_label_loss": float(mean[4]),
                            "cpu_s": time.process_time() - started,
                            "wall_s": time.perf_counter() - wall})
            window = []
            print(json.dumps(history[-1]), flush=True)
    net.eval()
    card = ModelCard(
        name=name, task="registration", architecture=architecture, config=net.config,
        classes=CLASSES, patch_size=(CROP,) * 3, modality="MR", spacing=(2.0, 2.0, 2.0),
        orientation="RAS", normalization={"scheme": "percentile", "percentiles": [0.5, 99.5]},
        in_channels=2, training_data=_training_data(pool),
        training_procedure=procedure(name, cpu_minutes, wall_minutes, seed, step,
                                     (time.process_time() - started) / 60,
                                     smoothness_weight),
        evaluated_on="not evaluated", license="BSD-3-Clause",
        intended_use=("Research and teaching: deformable registration of brain MR of any "
                      "contrast at about 2 mm after an affine pre-alignment, as the start of "
                      f"a classical refinement. {NOT_CLINICAL}"))
    folder = out / name
    save_model(net, card, folder)
    (folder / "training_log.json").write_text(json.dumps(history, indent=1) + "\n")
    plot_log(history, folder / "training.png", name)
    print(f"wrote {folder}")


def procedure(name: str, cpu_minutes: float, wall_minutes: float, seed: int, steps: int,
              cpu_used: float, smoothness_weight: float) -> str:
    """The card's training procedure: the command, the recipe and what it cost."""
    return (f"scripts/train_registration.py train --model {name} --cpu-minutes "
            f"{cpu_minutes:g} --wall-minutes {wall_minutes:g} --seed {seed} --smoothness "
            f"{smoothness_weight:g}: {steps} steps of "
            f"one pair each on a random {CROP}^3 crop: a brain of the pool against its twin "
            f"rendering or (probability {CONTRAST:g}) a random contrast of it, moved by a "
            f"known random diffeomorphism (largest displacement 2-10 mm, control spacing "
            f"16-28 mm); loss (SynthMorph's): 1 - mean soft Dice of CSF, GM and WM between "
            f"the fixed labels and the moving labels carried through the predicted transform, "
            f"at every {STRIDE}nd voxel, + {smoothness_weight:g} x mean squared velocity gradient "
            f"(per mm); AdamW lr {LEARNING_RATE:g} with a cosine decay over the budget; "
            f"{cpu_used:.1f} CPU-minutes on one thread of a shared, heavily loaded 2-core CPU.")


def plot_log(history: list[dict], path: Path, name: str) -> None:
    """The label loss the net trains on and the velocity error it does not, each against
    what predicting no motion scores (the training package's plot_curves draws
    segmentation epochs and validation Dice)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_medattn.io.atomic import atomic_path

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    steps = [h["step"] for h in history]
    for column, (key, still, label) in enumerate((
            ("label_loss", "zero_prediction_label_loss", "label loss (1 - soft Dice)"),
            ("velocity_mse", "zero_prediction_mse", "velocity squared error (mm^2)"))):
        axes = figure.add_subplot(1, 2, column + 1)
        axes.plot(steps, [h[key] for h in history], label="network")
        if all(still in h for h in history):
            axes.plot(steps, [h[still] for h in history], "--", label="predicting no motion")
        axes.set(xlabel="step", ylabel=f"{label}, {STEPS_PER_LOG}-step means")
        axes.legend()
    figure.suptitle(f"{name}: training")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary)


def _training_data(pool) -> str:
    kinds = {k: int((pool["kinds"] == k).sum()) for k in np.unique(pool["kinds"])}
    return (f"A pool of {len(pool['kinds'])} synthetic brains made from the MNI ICBM152 2009a "
            f"nonlinear symmetric template as nilearn ships it (2 mm; tissue labels by "
            f"napari_medattn.training.synthesis.mni152_tissue_labels) by "
            f"synthetic_brain_cases({POOL_SIZE}, seed {POOL_SEED}, synthetic_fraction 0.6, "
            f"deformation_mm {DEFORMATION_MM:g}) plus, for every fourth brain, its plain "
            f"deformed T1 with a random gamma: " + ", ".join(f"{n} {k}" for k, n in
                                                            kinds.items())
            + ". A pair is one brain against its twin rendering or a random intensity map of "
              "it (mostly another contrast), moved by a known random diffeomorphism. No scan "
              "of any person was used. Template (c) 1993-2009 Louis Collins, McConnell Brain "
              "Imaging Centre, free for use with attribution.")


# ---------------------------------------------------------------------------- evaluation


def held_out_pairs(count: int = 3):
    """``count`` held-out pairs (fixed, moving, fixed labels, moving labels) of seed
    :data:`HELD_OUT_SEED`: brains ``2k`` and ``2k + 1`` of that stream."""
    from napari_medattn.training.synthesis import synthetic_brain_cases

    cases = list(synthetic_brain_cases(2 * count, HELD_OUT_SEED, synthetic_fraction=0.6,
                                       deformation_mm=DEFORMATION_MM))
    for k in range(count):
        (fixed, fixed_labels), (moving, moving_labels) = cases[2 * k], cases[2 * k + 1]
        yield fixed, moving, fixed_labels, moving_labels


def evaluate(names: list[str], count: int, classical: bool) -> dict:
    """Dice (mean of CSF, GM, WM), folding and seconds on held-out pairs, of each model and
    (optionally) of the classical engine, on the same pairs; written into each card."""
    from napari_medattn.io.atomic import atomic_path
    from napari_medattn.metrics.registration import folding, jacobian_determinant
    from napari_medattn.metrics.segmentation import evaluate_pair
    from napari_medattn.registration import Settings, register, warp
    from napari_medattn.registration.learned import register_learned

    classes = {int(k): v for k, v in TISSUE_LABELS.items() if k}
    runs = {name: (lambda f, m, name=name: register_learned(f, m, model=str(BUILTIN_DIR / name)))
            for name in names}
    if classical:
        runs["classical"] = lambda f, m: register(f, m, Settings(method="deformable",
                                                                 metric="ncc"))
    rows: dict[str, list] = {"unregistered": [], **{method: [] for method in runs}}
    for fixed, moving, fixed_labels, moving_labels in held_out_pairs(count):
        before = evaluate_pair(Volume(moving_labels.data, fixed.affine, "SEG"), fixed_labels,
                               classes=classes)
        rows["unregistered"].append((np.mean([s.dice for s in before]), 0.0, 0.0))
        for method, run in runs.items():
            result = run(fixed, moving)
            warped = warp(moving_labels, result.transform, fixed, labels=True)
            scores = evaluate_pair(warped, fixed_labels, classes=classes)
            det = jacobian_determinant(result.transform, fixed.affine, fixed.spatial_shape)
            rows[method].append((float(np.mean([s.dice for s in scores])),
                                 folding(det, fixed.affine)[0], result.seconds))
            print(method, rows[method][-1], flush=True)
    figures = {method: np.mean(values, axis=0).tolist() for method, values in rows.items()}
    for name in names:
        metrics = {"held_out_dice_mean_unregistered": figures["unregistered"][0]}
        for method, key in ((name, "learned"), ("classical", "classical")):
            if method in figures:
                dice, fold, seconds = figures[method]
                metrics.update({f"held_out_dice_mean_{key}": dice,
                                f"held_out_folding_percent_{key}": fold,
                                f"held_out_seconds_{key}": seconds})
        _, card = load_model(BUILTIN_DIR / name)
        card = dataclasses.replace(card, metrics=metrics, evaluated_on=(
            f"{count} held-out synthetic pairs (brains 2k and 2k+1 of synthetic_brain_cases("
            f"seed {HELD_OUT_SEED}), a stream never used in training: two different "
            f"deformations of the SAME MNI152 template, mostly in different contrasts, not "
            f"scans of other people), registered with register_learned (affine pre-alignment "
            f"by the classical engine, no refinement) on one thread of a loaded CPU"
            + (" and, for comparison, the classical deformable engine (local NCC, defaults)"
               if classical else "")
            + ". Dice: mean over CSF, GM, WM of the moving labels warped onto the fixed ones "
              "(0-1); folding: % of fixed voxels with det J <= 0; seconds: wall time."))
        with atomic_path(BUILTIN_DIR / name / "card.json") as temporary:
            temporary.write_text(card.to_json(), encoding="utf-8")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pool = sub.add_parser("pool", help="make the synthetic training pool")
    pool.add_argument("--out", type=Path, required=True)
    pool.add_argument("--size", type=int, default=POOL_SIZE)
    fit = sub.add_parser("train", help="train one model within a CPU budget")
    fit.add_argument("--pool", type=Path, required=True)
    fit.add_argument("--model", choices=sorted(MODELS), required=True)
    fit.add_argument("--cpu-minutes", type=float, default=20.0)
    fit.add_argument("--wall-minutes", type=float, default=60.0,
                     help="stop after this wall time too (a shared machine)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--smoothness", type=float, default=SMOOTHNESS,
                     help="weight of the mean squared velocity gradient (per mm)")
    fit.add_argument("--out", type=Path, default=BUILTIN_DIR)
    score = sub.add_parser("evaluate", help="score a trained model on held-out pairs")
    score.add_argument("--model", choices=sorted(MODELS), nargs="+", required=True)
    score.add_argument("--pairs", type=int, default=3)
    score.add_argument("--no-classical", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "pool":
        make_pool(args.out, args.size)
    elif args.command == "train":
        train(args.pool, args.model, args.cpu_minutes, args.wall_minutes, args.seed, args.out,
              args.smoothness)
    else:
        print(json.dumps(evaluate(args.model, args.pairs, not args.no_classical), indent=1))


if __name__ == "__main__":
    main()
