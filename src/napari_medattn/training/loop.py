"""Patch-based training of any library network, with checkpoints that carry a model card.

::

    run = TrainingConfig("unet", {"channels": [8, 16, 32], "attention": "gate"},
                         patch_size=(64, 64, 64), spacing=(2.0, 2.0, 2.0),
                         normalization={"scheme": "zscore"}, modality="MR",
                         epochs=20, steps_per_epoch=100)
    result = train(run, train_cases, classes=["background", "CSF", "grey matter",
                   "white matter"], val_cases=validation_cases, out_dir="runs/unet-gate")
    module, card = load_model(result.best)      # napari_medattn.models.registry

Each epoch draws ``steps_per_epoch`` batches of random patches
(:class:`~napari_medattn.training.patches.PatchDataset`, foreground oversampling),
augments them on the training device (:class:`~napari_medattn.training.augment.Compose`),
and minimises Dice + cross-entropy (:func:`~napari_medattn.training.losses.dice_ce_loss`)
with AdamW; the learning rate rises linearly over the warm-up steps, then follows a cosine
to zero (:func:`cosine_lr`). On CUDA the forward pass runs under bfloat16 autocast; on
other devices in float32.

After every epoch the whole validation cases are segmented with
:func:`napari_medattn.inference.segment`, exactly as a user runs the saved model (its
card's orientation, spacing, normalisation and window; float32), and scored with
:func:`napari_medattn.metrics.evaluate_pair` on the cases' own grids (Dice, HD95 in mm).

Files in ``out_dir``:

* ``last/`` and ``best/``: model folders (``weights.safetensors`` + ``card.json``,
  written by :func:`~napari_medattn.models.registry.save_model`), loadable by
  :func:`~napari_medattn.models.registry.load_model`. ``best`` is the epoch with the
  highest mean validation Dice (without validation cases: the lowest training loss).
* ``training_state.pt``: what resuming needs besides the weights (optimizer moments,
  epoch, history, random generator states), plain tensors and numbers read back with
  ``torch.load(weights_only=True)``.
* ``history.json`` (one entry per epoch) and ``curves.png`` (:func:`plot_curves`).

Resuming (``resume=True``) reloads ``last/`` and ``training_state.pt`` and continues with
the next epoch; on the CPU in float32 the result is bit for bit that of an uninterrupted
run with the same seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medattn.errors import Cancelled, DimensionError, ModelError
from napari_medattn.inference.devices import resolve_device
from napari_medattn.inference.sliding_window import CancelCheck, check_cancel
from napari_medattn.io.atomic import atomic_path
from napari_medattn.io.volume import Volume
from napari_medattn.models import create
from napari_medattn.models.card import ClassInfo, ModelCard
from napari_medattn.models.registry import save_model
from napari_medattn.training.augment import Compose
from napari_medattn.training.cards import (
    card_for_run,
    card_with_metrics,
    class_list,
    initialise_from,
)
from napari_medattn.training.checkpoint import optimizer_to, restore_state, save_state
from napari_medattn.training.config import TrainingConfig
from napari_medattn.training.datasets import Case
from napari_medattn.training.losses import dice_ce_loss
from napari_medattn.training.patches import PatchDataset, prepare_case
from napari_medattn.training.plot import plot_curves

HISTORY_FILE = "history.json"
CURVES_FILE = "curves.png"

#: Progress callback: one dict per training step (``{"phase": "train", "epoch", "step",
#: "steps", "loss"}``) and per validation (``{"phase": "validation", "epoch", **scores}``).
TrainingProgress = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class TrainingResult:
    """Where a training run left its outputs.

    Attributes
    ----------
    out_dir, best, last, curves : Path
        The run folder, the best and last model folders, the PNG of the curves.
    history : list of dict
        One entry per epoch: ``epoch``, ``loss`` (mean over its steps), ``lr`` (at its
        end), ``seconds``, and with validation cases ``val_dice``, ``val_dice_<class>``,
        ``val_hd95_mm``.
    card : ModelCard
        The card of ``best``.
    """

    out_dir: Path
    best: Path
    last: Path
    curves: Path
    history: list[dict[str, Any]]
    card: ModelCard


def cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate of optimisation step ``step`` (0-based).

    Linear warm-up from ``base_lr / (warmup_steps + 1)`` to ``base_lr`` over the first
    ``warmup_steps`` steps, then ``base_lr * (1 + cos(pi * t)) / 2`` with ``t`` running
    from 0 to 1 over the remaining steps.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    remaining = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / remaining, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    run: TrainingConfig,
    cases: Sequence[Case],
    *,
    classes: Sequence[str | ClassInfo | Mapping[str, str]],
    out_dir: str | os.PathLike,
    val_cases: Sequence[Case] = (),
    device: str | torch.device = "auto",
    resume: bool = False,
    num_workers: int = 0,
    card_fields: Mapping[str, Any] | None = None,
    progress: TrainingProgress | None = None,
    cancel: CancelCheck | None = None,
    progress_bar: bool = True,
) -> TrainingResult:
    """Train ``run.architecture`` on random patches of ``cases``; save best and last.

    Parameters
    ----------
    run : TrainingConfig
        The network, its grid (patch, spacing, orientation, normalisation, modality) and
        the optimisation (batch, epochs, steps, learning rate, warm-up, seed,
        augmentation, start weights, precision); the card records it.
    cases : sequence of Case
        Training cases on their own grids (as :func:`~.datasets.load_cases` returns
        them); they are brought to the run's orientation, spacing and normalisation with
        :func:`~.datasets.prepare_case`, as inference will.
    classes : sequence
        Class names by label value (0 = background), or ``ClassInfo`` / ``{"name",
        "color"}`` entries; names alone get the default palette.
    out_dir : path-like
        Run folder (see the module docstring).
    val_cases : sequence of Case
        Whole cases segmented after every epoch (on their own grids).
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    resume : bool
        Continue the run in ``out_dir`` after its last finished epoch.
    num_workers : int
        DataLoader worker processes (patches do not depend on it).
    card_fields : mapping, optional
        Card fields to set: ``name`` (default ``out_dir``'s name), ``training_data``,
        ``evaluated_on`` (default: a description of the validation cases),
        ``license``, ``intended_use``, ``task``; ``training_procedure`` is prefixed to
        the automatic description of the run.
    progress : callable, optional
        Called with a dict per step and per validation (see :data:`TrainingProgress`).
    cancel : callable or threading.Event, optional
        Checked between steps; raises :class:`~napari_medattn.errors.Cancelled` (the last
        finished epoch stays on disk and can be resumed).
    progress_bar : bool
        Show a tqdm bar with the loss and the time left on stderr.

    Returns
    -------
    TrainingResult

    Raises
    ------
    ModelError
        Unknown architecture or option, mismatching classes or channels, a resume that
        finds no run or one with other settings.
    DimensionError
        No cases (a bad patch size or non-positive counts: when making ``run``).
    """
    out_dir = Path(out_dir)
    if not cases:
        raise DimensionError("Training needs at least one case.")
    trainer = _Trainer(run, cases, class_list(classes), device, out_dir, card_fields)
    trainer.start(resume, num_workers)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.total_steps,
                   initial=trainer.start_epoch * int(run.steps_per_epoch),
                   desc=trainer.card.name, unit="step", dynamic_ncols=True)
    try:
        for epoch in range(trainer.start_epoch, int(run.epochs)):
            started = time.perf_counter()
            entry = trainer.epoch(epoch, bar, progress, cancel)
            if val_cases:
                check_cancel(cancel)
                scores = validate(trainer.model, trainer.card, val_cases,
                                  device=trainer.device, cancel=cancel)
                entry.update(scores)
                if progress is not None:
                    progress({"phase": "validation", "epoch": epoch + 1, **scores})
                if bar is not None:
                    bar.write(f"epoch {epoch + 1}: loss {entry['loss']:.4f}, validation Dice "
                              f"{scores['val_dice']:.4f}, HD95 {scores['val_hd95_mm']:.2f} mm")
            entry["seconds"] = time.perf_counter() - started
            trainer.save(entry, val_cases)
    except Cancelled:
        raise Cancelled("Training was cancelled; the last finished epoch is saved and can "
                        "be resumed.") from None
    finally:
        if bar is not None:
            bar.close()
    best_card = ModelCard.read(out_dir / "best" / "card.json")
    return TrainingResult(out_dir, out_dir / "best", out_dir / "last", out_dir / CURVES_FILE,
                          trainer.history, best_card)


class _Trainer:
    """The state of one training run: network, card, data, optimiser and history."""

    def __init__(self, run: TrainingConfig, cases: Sequence[Case], classes: list,
                 device: str | torch.device, out_dir: Path,
                 card_fields: Mapping[str, Any] | None) -> None:
        self.run, self.cases, self.out_dir = run, cases, out_dir
        channels = int(cases[0].image.data.shape[0])
        net_config = dict(run.config)
        for key, value in (("in_channels", channels), ("out_channels", len(classes))):
            if net_config.setdefault(key, value) != value:
                raise ModelError(f"The config sets {key}={net_config[key]}, but the data "
                                 f"need {value}.")
        self.augmentation = Compose.from_config(run.augment) if run.augment is not None \
            else None
        self.device = resolve_device(device).device
        self.use_amp = bool(run.amp) and self.device.type == "cuda"
        precision = (f"bfloat16 autocast on {self.device.type}" if self.use_amp
                     else f"float32 on {self.device.type}")
        torch.manual_seed(int(run.seed))  # the weights' initialisation
        self.model = create(run.architecture, **net_config)
        net_config = json.loads(json.dumps(self.model.config))  # every default spelled out
        source = None
        if run.initial_weights is not None:
            source = initialise_from(self.model, run.architecture, net_config,
                                     run.initial_weights)
        self.settings = run.settings(
            config=net_config, initial_weights=source,
            augment=None if self.augmentation is None else self.augmentation.config)
        self.card = card_for_run(run, self.settings, precision, classes, out_dir,
                                 card_fields)
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.start_epoch = 0

    def start(self, resume: bool, num_workers: int) -> None:
        """Prepare the cases and the optimiser; reload the last epoch when resuming."""
        run = self.run
        prepared = [prepare_case(c, orientation=run.orientation, spacing=run.spacing,
                                 normalization=run.normalization) for c in self.cases]
        self.dataset = PatchDataset(
            prepared, run.patch_size,
            samples_per_epoch=int(run.steps_per_epoch) * int(run.batch_size),
            foreground_fraction=run.foreground_fraction, seed=int(run.seed))
        self.num_workers = int(num_workers)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(run.lr),
                                           weight_decay=float(run.weight_decay))
        self.augment_rng = torch.Generator().manual_seed(int(run.seed))
        if resume:
            self.start_epoch, self.history, self.best_score = restore_state(
                self.out_dir, self.settings, self.model, self.optimizer, self.augment_rng)
        self.model.to(self.device)
        optimizer_to(self.optimizer, self.device)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def epoch(self, epoch: int, bar: Any, progress: TrainingProgress | None,
              cancel: CancelCheck | None) -> dict[str, Any]:
        """One epoch of optimisation steps; its history entry (epoch, mean loss, lr)."""
        run, model, device = self.run, self.model, self.device
        self.dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=int(run.batch_size),
                                             shuffle=False, num_workers=self.num_workers,
                                             pin_memory=device.type == "cuda")
        model.train()
        losses = []
        for step, (image, label) in enumerate(loader):
            check_cancel(cancel)
            global_step = epoch * int(run.steps_per_epoch) + step
            rate = cosine_lr(global_step, run.total_steps, run.warmup, float(run.lr))
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            image = image.to(device, non_blocking=True)
            label = label.to(device, non_blocking=True)
            if self.augmentation is not None:
                image, label = self.augmentation(image, label, generator=self.augment_rng)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                logits = model(image)
            loss = dice_ce_loss(logits, label)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Clipping as nnU-Net does: a rare huge gradient must not wreck the weights.
            nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            self.optimizer.step()
            value = float(loss.detach())
            losses.append(value)
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}")
                bar.update(1)
            if progress is not None:
                progress({"phase": "train", "epoch": epoch + 1, "step": step + 1,
                          "steps": int(run.steps_per_epoch), "loss": value})
        return {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": rate}

    def save(self, entry: dict[str, Any], val_cases: Sequence[Case]) -> None:
        """Record the epoch; write last/ (and best/ when it improved), state and curves."""
        self.history.append(entry)
        score = entry["val_dice"] if val_cases else -entry["loss"]
        improved = score > self.best_score
        self.best_score = max(self.best_score, score)
        last_card = card_with_metrics(self.card, self.history, val_cases, int(self.run.epochs))
        save_model(self.model, last_card, self.out_dir / "last")
        if improved:
            save_model(self.model, last_card, self.out_dir / "best")
        save_state(self.out_dir, self.settings, self.optimizer, self.augment_rng,
                   entry["epoch"], self.history, self.best_score)
        _write_json(self.out_dir / HISTORY_FILE, self.history)
        plot_curves(self.history, self.out_dir / CURVES_FILE, title=self.card.name)


def validate(model: nn.Module, card: ModelCard, cases: Sequence[Case], *,
             device: str | torch.device = "cpu", cancel: CancelCheck | None = None
             ) -> dict[str, float]:
    """Segment whole cases as users do and score them against their labels.

    Each case's image goes through :func:`napari_medattn.inference.segment` with the
    card (float32, default overlap), and the labels it returns on the case's grid are
    scored with :func:`napari_medattn.metrics.evaluate_pair`.

    Returns
    -------
    dict
        ``val_dice`` (mean foreground Dice over classes and cases, 0-1),
        ``val_dice_<class name>`` (mean over cases), ``val_hd95_mm`` (mean finite HD95 in
        mm over classes and cases; classes missed entirely are left out of it) and
        ``val_hd95_missing`` (how many class/case pairs had no finite HD95).
    """
    from napari_medattn.inference import segment
    from napari_medattn.metrics import evaluate_pair

    was_training = model.training
    dice: dict[str, list[float]] = {name: [] for name in card.class_names[1:]}
    hd95: list[float] = []
    missing = 0
    try:
        for case in cases:
            image = case.image
            if image.data.ndim == 4 and image.data.shape[0] == 1:
                image = Volume(image.data[0], image.affine, image.modality, image.meta)
            result = segment(image, model, card, device=device, use_autocast=False,
                             cancel=cancel)
            scores = evaluate_pair(result.labels, case.label,
                                   classes=range(1, card.num_classes),
                                   class_names=card.class_names, case=case.name)
            for score in scores:
                dice[score.name].append(score.dice)
                if math.isfinite(score.hd95_mm):
                    hd95.append(score.hd95_mm)
                else:
                    missing += 1
    finally:
        model.train(was_training)
    per_class = {f"val_dice_{name}": float(np.nanmean(values)) for name, values in dice.items()}
    return {"val_dice": float(np.nanmean(list(per_class.values()))), **per_class,
            "val_hd95_mm": float(np.mean(hd95)) if hd95 else math.inf,
            "val_hd95_missing": missing}


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
