"""What a training run is: one :class:`TrainingConfig`, which is also what its card records.

:func:`~napari_medattn.training.loop.train` takes it, a resumed run must have the same one
(:meth:`TrainingConfig.settings` is what the checkpoint compares), and the card's
``training_procedure`` sentence is written from it (:meth:`TrainingConfig.describe`), so
the three cannot disagree::

    config = TrainingConfig("unet", {"channels": [8, 16, 32], "attention": "gate"},
                            patch_size=(64, 64, 64), spacing=(1.5, 1.5, 1.5), epochs=50)
    result = train(config, train_cases, classes=["background", "liver"], out_dir="runs/a")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from napari_medattn.errors import DimensionError
from napari_medattn.training.patches import FOREGROUND_FRACTION


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The network, the grid it learns on and the optimisation of a training run.

    Attributes
    ----------
    architecture : str
        An architecture of :func:`napari_medattn.models.architectures`.
    config : mapping
        Its arguments; ``in_channels`` and ``out_channels`` are filled in from the cases
        and classes (and must agree with them when given).
    patch_size : tuple of 3 int
        Training patch and inference window in voxels.
    spacing : tuple of 3 float, optional
        Voxel size in mm to train (and infer) at; None keeps each case's own.
    orientation : str, optional
        Orientation code the array axes are turned to first (e.g. ``"RAS"``).
    normalization : mapping
        Intensity normalisation of the card (``{"scheme": "zscore"}`` by default).
    modality : str
        The card's expected modality (``"CT"``, ``"MR"``, ``"PT"``, ``"OT"``).
    batch_size, epochs, steps_per_epoch : int
        Patches per step, epochs, steps per epoch.
    lr, weight_decay : float
        AdamW's peak learning rate and decoupled weight decay.
    warmup_steps : int, optional
        Linear warm-up steps (default: 5 % of all steps).
    seed : int
        Seeds the weights' initialisation, the patches, the augmentation and dropout.
    augment : mapping, optional
        A :class:`~napari_medattn.training.augment.Compose` configuration (None: none).
    foreground_fraction : float
        Fraction of patches forced to hold foreground.
    initial_weights : str, optional
        Fine-tune: start from this model's weights (a name, model folder or weights file,
        as :func:`~napari_medattn.models.registry.load_model` reads), made with the same
        architecture and config.
    amp : bool
        bfloat16 autocast on CUDA (ignored elsewhere: the CPU trains in float32); the card
        records the precision used.
    """

    architecture: str
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    patch_size: Sequence[int] = (64, 64, 64)
    spacing: Sequence[float] | None = None
    orientation: str | None = None
    normalization: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"scheme": "zscore"})
    modality: str = "OT"
    batch_size: int = 2
    epochs: int = 10
    steps_per_epoch: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int | None = None
    seed: int = 0
    augment: Mapping[str, Any] | None = None
    foreground_fraction: float = FOREGROUND_FRACTION
    initial_weights: str | None = None
    amp: bool = True

    def __post_init__(self) -> None:
        patch = tuple(int(p) for p in self.patch_size)
        if len(patch) != 3 or min(patch) < 1:
            raise DimensionError(f"The patch size must be three positive voxel counts, got "
                                 f"{list(self.patch_size)}.")
        object.__setattr__(self, "patch_size", patch)
        for what, value in (("batch size", self.batch_size), ("epochs", self.epochs),
                            ("steps per epoch", self.steps_per_epoch)):
            if int(value) < 1:
                raise DimensionError(f"The {what} must be at least 1, got {value}.")
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "normalization", dict(self.normalization or
                                                       {"scheme": "zscore"}))
        object.__setattr__(self, "config", dict(self.config or {}))
        if self.initial_weights is not None:
            object.__setattr__(self, "initial_weights", str(self.initial_weights))

    @property
    def total_steps(self) -> int:
        return int(self.epochs) * int(self.steps_per_epoch)

    @property
    def warmup(self) -> int:
        """Warm-up steps: as given, else 5 % of all steps."""
        if self.warmup_steps is None:
            return int(round(0.05 * self.total_steps))
        return int(self.warmup_steps)

    def settings(self, *, config: Mapping[str, Any], augment: Mapping[str, Any] | None,
                 initial_weights: Mapping[str, str] | None) -> dict[str, Any]:
        """The run's settings as JSON values: what a resumed run must match and what the
        card's procedure is written from.

        ``config`` is the network's full config (every default spelled out), ``augment``
        the augmentation's full configuration, ``initial_weights`` the start model's name
        and weights hash; the rest comes from this config.
        """
        return {
            "architecture": self.architecture, "config": dict(config),
            "patch_size": list(self.patch_size), "batch_size": int(self.batch_size),
            "epochs": int(self.epochs), "steps_per_epoch": int(self.steps_per_epoch),
            "lr": float(self.lr), "weight_decay": float(self.weight_decay),
            "warmup_steps": self.warmup, "seed": int(self.seed),
            "augment": None if augment is None else dict(augment),
            "spacing": None if self.spacing is None else list(self.spacing),
            "orientation": self.orientation, "normalization": dict(self.normalization),
            "foreground_fraction": float(self.foreground_fraction),
            "initial_weights": None if initial_weights is None else dict(initial_weights),
        }


def describe(settings: Mapping[str, Any], precision: str) -> str:
    """The card's ``training_procedure`` sentence for a run's :meth:`~TrainingConfig.settings`.

    ``precision`` says how the steps computed (``"float32 on cpu"``, ...).
    """
    augment = settings["augment"]
    names = ", ".join(t["name"] for t in augment["transforms"]) if augment else "none"
    procedure = (
        f"napari_medattn.training.loop.train: {settings['epochs']} epochs x "
        f"{settings['steps_per_epoch']} steps, batch {settings['batch_size']} random "
        f"patches of {'x'.join(map(str, settings['patch_size']))} voxels "
        f"({settings['foreground_fraction']:.0%} forced to hold foreground), soft Dice + "
        f"cross-entropy, AdamW (lr {settings['lr']:g}, weight decay "
        f"{settings['weight_decay']:g}) with {settings['warmup_steps']} linear warm-up "
        f"steps then a cosine to 0, gradient norm clipped at 12, {precision}, "
        f"seed {settings['seed']}; augmentation: {names}.")
    start = settings.get("initial_weights")
    if start:
        procedure = (f"Fine-tuned from {start['name']} (weights SHA-256 {start['sha256']}). "
                     f"{procedure}")
    return procedure
