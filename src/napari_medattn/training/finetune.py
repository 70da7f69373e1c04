"""Fine-tune a segmentation model on one image and the labels a user painted or corrected.

::

    result = finetune(image, labels, "attention-unet-brain-tissue",
                      name="brain-tissue-my-scan", steps=20)
    result.entry.path          # <user model folder>/brain-tissue-my-scan
    result.segmentation.labels # the fine-tuned model's labels on the image's grid
    result.losses              # training loss per step

What it does, in order:

1. Checks the inputs before any training: the new name (a folder name, not taken by any
   listed model or folder), the base model (a model folder of this library's format with
   an architecture of :func:`napari_medattn.models.architectures`), the labels (on the
   image's grid, integers, at least one foreground voxel, every value one of the model's
   classes) and the image's channels. Each problem is one typed-error sentence.
2. Trains with :func:`napari_medattn.training.loop.train` from the base model's weights
   (``initial_weights``), with the base card's classes, window, spacing, orientation and
   normalisation, so the new model expects exactly what the old one did: one epoch of
   ``steps`` steps of random patches (a third forced to hold foreground), AdamW with a
   small learning rate warming up then decaying by a cosine to zero.
3. Segments the image with the new model (:func:`napari_medattn.inference.segment`, as a
   user would) and scores that against the labels
   (:func:`napari_medattn.metrics.evaluate_pair`). These figures go into the card,
   named ``train_image_*`` and described as measured on the training image itself: they
   say how well the model fits the labels it was taught, not how it does on other scans.
4. Installs the weights and card with :func:`~napari_medattn.models.registry.save_model`
   into ``registry.user_model_dir() / name``, where :func:`~.registry.list_models` (and
   ``medattn models``, and the widgets) find it.

The whole label map is the target. Every voxel counts, 0 being background, exactly as in
:func:`~napari_medattn.training.loop.train`: there is no "unlabelled" value. The
intended workflow is therefore to run the model (Segment widget), correct its labels
layer where it is wrong, and fine-tune on the corrected layer. A layer with a few brush
strokes on an empty canvas would teach the model that everything else is background.
An ignore value would need a masked loss in the shared training loop. Training on the
full corrected map keeps one loss for training and fine-tuning, and corrected labels are
complete anyway.

Nothing half-made is left behind: the run works in a hidden temporary folder inside the
user model folder (never listed: its card is not at its top level), and the finished
model folder is renamed into place only after the last cancel check. A cancel, an error
or a crash before that leaves no model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_medattn.errors import (
    Cancelled,
    DimensionError,
    GeometryError,
    MedAttnError,
    ModelError,
    WriteError,
)
from napari_medattn.inference.pipeline import Segmentation, segment
from napari_medattn.inference.sliding_window import CancelCheck, check_cancel
from napari_medattn.io.volume import Volume
from napari_medattn.metrics.segmentation import SegmentationScores, evaluate_pair
from napari_medattn.models import architectures, registry
from napari_medattn.models.card import ModelCard
from napari_medattn.training.config import TrainingConfig
from napari_medattn.training.datasets import Case, make_case
from napari_medattn.training.loop import train

#: Default number of optimisation steps and peak learning rate. A trained model needs a
#: learning rate well below a from-scratch run's (1e-3) so that it adapts without
#: forgetting; 20 steps of batch 2 take a few minutes on a CPU at a 64^3 window.
DEFAULT_STEPS = 20
DEFAULT_LR = 2e-4
#: The card's ``evaluated_on``: the metrics are measured on the fine-tuning image itself.
SELF_EVALUATED = ("the image it was fine-tuned on ({image}), against the labels it was "
                  "fine-tuned with: how closely it fits its own training data, not how it "
                  "does on other scans (no held-out data).")
#: Prefix of the card's metrics measured on the fine-tuning image itself.
METRIC_PREFIX = "train_image_"
#: A model name is a folder name: letters, digits, '.', '_', '-'; no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")

#: Progress callback: ``{"phase": "train", "step", "steps", "loss"}`` per training step,
#: then ``{"phase": "segment", "done", "total"}`` per batch of windows of the final run.
FinetuneProgress = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class FinetuneResult:
    """What a fine-tuning run made.

    Attributes
    ----------
    entry : ModelEntry
        The installed model (``source="user"``), as :func:`~.registry.list_models` lists it.
    segmentation : Segmentation
        The fine-tuned model's result on the image, on the image's own grid (shape,
        array order and affine).
    losses : list of float
        Dice + cross-entropy training loss of every step, in order.
    scores : list of SegmentationScores
        Per foreground class, the segmentation against the labels (on the training image).
    """

    entry: registry.ModelEntry
    segmentation: Segmentation
    losses: list[float]
    scores: list[SegmentationScores]


def finetune(
    image: Volume,
    labels: Volume | np.ndarray,
    model: str | os.PathLike | registry.ModelEntry,
    *,
    name: str,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_size: int = 2,
    seed: int = 0,
    device: str | torch.device = "auto",
    augment: Mapping[str, Any] | None = None,
    progress: FinetuneProgress | None = None,
    cancel: CancelCheck | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``image`` and ``labels``; install it as a user model ``name``.

    Parameters
    ----------
    image : Volume
        The scan (3D, or 4D with the model's input channels first), any orientation.
    labels : Volume or ndarray
        Label map on the image's grid: a Volume with the same shape and affine (within
        1e-3 mm), or an array shaped like the image's spatial axes in the same array
        order. Every voxel is a target; 0 is background (see the module docstring).
    model : str, path-like or ModelEntry
        The base model: a name from :func:`~.registry.list_models`, a model folder
        (``card.json`` + ``weights.safetensors``), or a listed entry.
    name : str
        Name of the new model and of its folder in :func:`~.registry.user_model_dir`;
        letters, digits, ``.``, ``_`` and ``-``, not taken by any listed model.
    steps : int
        Optimisation steps (batches of random patches).
    lr : float
        Peak learning rate of AdamW (warm-up, then a cosine to zero).
    batch_size : int
        Patches of the model's window size per step.
    seed : int
        Seeds the patches, the augmentation and dropout.
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``: for training and the final run.
    augment : mapping, optional
        A :class:`~napari_medattn.training.augment.Compose` configuration; default none
        (the model is meant to fit this image).
    progress : callable, optional
        Called with a dict per training step and per window batch of the final run
        (see :data:`FinetuneProgress`); the command line draws its progress bar from it.
    cancel : callable or threading.Event, optional
        Checked between steps and between windows; raises
        :class:`~napari_medattn.errors.Cancelled` and leaves no model behind.

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ModelError
        A bad or taken name; a base model that is not a model folder of this library.
    GeometryError
        Labels on another grid than the image.
    DimensionError
        Labels with no foreground or with values the model has no class for; an image
        with another number of channels than the model takes; non-positive steps, batch
        size or learning rate.
    ReadError
        Non-integer or negative label values.
    WriteError
        The user model folder cannot be written.
    Cancelled
        When ``cancel`` fires; no model folder is left.
    """
    check_model_name(name)
    _check_settings(steps, batch_size, lr)
    base_path, base = _base_model(model)
    base_run = _base_run(base, base_path)
    case = training_case(image, labels, base)

    user_dir = registry.user_model_dir()
    target = user_dir / name
    losses: list[float] = []
    on_step, on_windows = _relays(progress, losses)
    try:
        user_dir.mkdir(parents=True, exist_ok=True)
        # Hidden, inside the user folder: the final rename stays on one file system, and
        # a crash leaves no folder that list_models would show.
        with tempfile.TemporaryDirectory(dir=user_dir, prefix=".finetune-") as work:
            work = Path(work)
            # One epoch of ``steps`` steps on the base model's own grid and normalisation.
            config = dataclasses.replace(
                base_run, batch_size=int(batch_size), steps_per_epoch=int(steps),
                lr=float(lr), seed=int(seed), augment=augment)
            run = train(
                config, [case], classes=base.classes, out_dir=work / "run", device=device,
                card_fields={"name": name, "training_data": _training_data(image, case, base),
                             "license": base.license, "intended_use": base.intended_use},
                progress=on_step, cancel=cancel, progress_bar=False)
            module, card = registry.load_model(run.last)
            result = segment(image, module, card, device=device, use_autocast=False,
                             progress=on_windows, cancel=cancel)
            scores = evaluate_pair(result.labels.canonical(), case.label,
                                   classes=range(1, card.num_classes),
                                   class_names=card.class_names, case=image.name)
            card = dataclasses.replace(card, metrics=_metrics(scores, losses),
                                       evaluated_on=SELF_EVALUATED.format(image=image.name))
            staged = registry.save_model(module, card, work / "model")
            check_cancel(cancel)
            check_model_name(name)  # taken while training ran?
            os.rename(staged, target)
    except Cancelled:
        raise Cancelled("Fine-tuning was cancelled; no model was saved.") from None
    except OSError as error:
        raise WriteError(f"Cannot save the model in {target}: "
                         f"{error.strerror or error}.") from None
    entry = registry.ModelEntry(ModelCard.read(target / registry.CARD_FILE), target, "user")
    return FinetuneResult(entry, result, losses, scores)


def _relays(progress: FinetuneProgress | None, losses: list[float]
            ) -> tuple[Callable[[dict[str, Any]], None], Callable[[int, int], None]]:
    """The training loop's and the final run's progress callbacks: each step's loss is
    kept in ``losses``, and both report to ``progress`` in :data:`FinetuneProgress` form."""

    def on_step(info: dict[str, Any]) -> None:
        losses.append(float(info["loss"]))
        if progress is not None:
            progress({"phase": "train", "step": info["step"], "steps": info["steps"],
                      "loss": float(info["loss"])})

    def on_windows(done: int, total: int) -> None:
        if progress is not None:
            progress({"phase": "segment", "done": done, "total": total})

    return on_step, on_windows


# ------------------------------------------------------------------------------ checks


def _check_settings(steps: int, batch_size: int, lr: float) -> None:
    """Raise DimensionError for non-positive steps, batch size or learning rate."""
    for what, value in (("number of steps", steps), ("batch size", batch_size)):
        if int(value) < 1:
            raise DimensionError(f"The {what} must be at least 1, got {value}.")
    if not float(lr) > 0:
        raise DimensionError(f"The learning rate must be positive, got {lr}.")


def check_model_name(name: str) -> str:
    """Check that ``name`` can name a new user model; return it.

    Raises
    ------
    ModelError
        Not a plain folder name, or taken by a listed model or a folder in
        :func:`~.registry.user_model_dir`.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ModelError(f"The model name {name!r} must be 1-80 letters, digits, '.', '_' or "
                         f"'-', starting with a letter or digit.")
    taken = {entry.name: entry.path for entry in registry.list_models(problems=[])}
    if name in taken:
        raise ModelError(f"A model called {name!r} already exists ({taken[name]}); choose "
                         f"another name.")
    folder = registry.user_model_dir() / name
    if folder.exists():
        raise ModelError(f"The folder {folder} already exists; choose another name.")
    return name


def suggest_name(base_name: str) -> str:
    """A free name for a fine-tuned copy of ``base_name``: ``<base>-finetuned``, then
    ``<base>-finetuned-2``, ``-3``, ..."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", base_name).strip("-.") or "model"
    stem = f"{stem[:68]}-finetuned"
    candidate, number = stem, 1
    while True:
        try:
            return check_model_name(candidate)
        except ModelError:
            number += 1
            candidate = f"{stem}-{number}"


def training_case(image: Volume, labels: Volume | np.ndarray, card: ModelCard) -> Case:
    """The checked training case of ``image`` and ``labels`` for the model of ``card``.

    Parameters
    ----------
    image : Volume
        The scan, any orientation.
    labels : Volume or ndarray
        Label map; an array is taken to be on the image's grid in its array order.
        A Volume may be stored in another array order (e.g. NIfTI i, j, k against DICOM
        slices): both are compared in their canonical (z, y, x) order.
    card : ModelCard
        The model the labels are meant for.

    Returns
    -------
    Case
        Named after the image, in canonical (z, y, x) order.

    Raises
    ------
    GeometryError, DimensionError, ReadError
        See :func:`finetune` (ReadError: non-integer or negative labels).
    """
    channels = 1 if image.data.ndim == 3 else int(image.data.shape[0])
    if channels != card.in_channels:
        raise DimensionError(f"Model {card.name!r} needs {card.in_channels} input channel(s); "
                             f"the image {image.name} has {channels}.")
    if not isinstance(labels, Volume):
        array = np.asarray(labels)
        if array.shape != image.spatial_shape:
            raise GeometryError(f"The labels have shape {array.shape} but the image "
                                f"{image.name} has {image.spatial_shape}; draw them on the "
                                f"image's grid.")
        labels = Volume(array, image.affine.copy(), "SEG", {"name": f"{image.name} labels"})
    # The same canonical view on both sides, so that storage order does not matter.
    image, labels = image.canonical(), labels.canonical()
    if labels.data.ndim != 3:
        raise DimensionError(f"The labels must be one 3D map, not {labels.data.ndim}D.")
    try:
        case = make_case(image.name, [image], labels)
    except MedAttnError as error:
        # make_case speaks of a dataset "case"; here there is one image and its labels.
        message = str(error).replace(f"Case {image.name}: ", "", 1)
        raise type(error)(message[:1].upper() + message[1:]) from None
    values = np.unique(np.asarray(case.label.data))
    if values.max() >= card.num_classes:
        raise DimensionError(f"The labels have value {int(values.max())} but model "
                             f"{card.name!r} has classes 0-{card.num_classes - 1} "
                             f"({', '.join(card.class_names)}).")
    if values.max() == 0:
        raise DimensionError("The labels hold only background (0); paint or correct at "
                             "least one class before fine-tuning.")
    return case


def _base_run(base: ModelCard, base_path: Path) -> TrainingConfig:
    """A one-epoch run from ``base``'s weights on its grid, normalisation and modality."""
    return TrainingConfig(base.architecture, base.config, patch_size=base.patch_size,
                          spacing=base.spacing, orientation=base.orientation,
                          normalization=base.normalization, modality=base.modality, epochs=1,
                          initial_weights=base_path)


def _base_model(model: str | os.PathLike | registry.ModelEntry) -> tuple[Path, ModelCard]:
    """The folder and card of the base model, refused unless training can rebuild it."""
    if isinstance(model, registry.ModelEntry):
        folder = model.path
    else:
        folder = Path(model)
        if not folder.exists() and isinstance(model, str) and "/" not in model \
                and os.sep not in model:
            folder = registry.find_model(model).path
    if not ((folder / registry.CARD_FILE).is_file()
            and (folder / registry.WEIGHTS_FILE).is_file()):
        raise ModelError(f"Fine-tuning starts from a model name or a model folder "
                         f"(card.json + weights.safetensors); {folder} is neither.")
    card = ModelCard.read(folder / registry.CARD_FILE)
    if card.architecture not in architectures():
        raise ModelError(f"Model {card.name!r} is a {card.architecture} network; fine-tuning "
                         f"supports this library's architectures "
                         f"({', '.join(architectures())}).")
    if len(card.patch_size) != 3:
        raise ModelError(f"Model {card.name!r} has a 2D window; fine-tuning trains 3D "
                         f"models.")
    return folder, card


# ------------------------------------------------------------------------------ card


def _training_data(image: Volume, case: Case, base: ModelCard) -> str:
    """The card's description of the fine-tuning data, and of the base model's."""
    counts = np.bincount(np.asarray(case.label.data).ravel(), minlength=base.num_classes)
    classes = ", ".join(f"{n} {c}" for n, c in zip(counts, base.class_names))
    spacing = " x ".join(f"{s:.3g}" for s in image.spacing)
    source = image.meta.get("source")
    shape = " x ".join(map(str, image.spatial_shape))
    return (f"Fine-tuned on one image, {image.name} ({image.modality}, {shape} voxels of "
            f"{spacing} mm{f', from {source}' if source else ''}), with a user's label map "
            f"(voxels per class: {classes}). The base model {base.name} was trained on: "
            f"{base.training_data}")


def _metrics(scores: Sequence[SegmentationScores], losses: Sequence[float]) -> dict[str, float]:
    """Card metrics: Dice per class and mean, mean HD95, on the training image; the loss."""
    metrics: dict[str, float] = {}
    dice = [s.dice for s in scores if math.isfinite(s.dice)]
    if dice:
        metrics[f"{METRIC_PREFIX}dice_mean"] = float(np.mean(dice))
    for score in scores:
        if math.isfinite(score.dice):
            metrics[f"{METRIC_PREFIX}dice_{score.name}"] = float(score.dice)
    hd95 = [s.hd95_mm for s in scores if math.isfinite(s.hd95_mm)]
    if hd95:
        metrics[f"{METRIC_PREFIX}hd95_mm_mean"] = float(np.mean(hd95))
    metrics["steps"] = len(losses)
    # The last steps' mean: one step's loss depends on which patches it drew.
    metrics["final_train_loss"] = float(np.mean(losses[-5:]))
    return metrics
