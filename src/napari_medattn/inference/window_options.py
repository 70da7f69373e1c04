"""The small option objects of the sliding-window engine (:mod:`.sliding_window`).

:class:`WindowOptions` says how windows are laid, run and blended, :class:`OutputRequest`
what to return besides the labels, and :class:`MemoryBudget` what memory to plan against::

    result = sliding_window_inference(
        image, model, (96, 96, 96),
        windows=WindowOptions(overlap=0.5, batch_size=2),
        outputs=OutputRequest(keep_probabilities=(1,), tta=True, uncertainty="variance"))

All are frozen dataclasses with the defaults of a plain segmentation, so a caller names only
what it changes (``dataclasses.replace`` derives one from another).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from napari_medattn.errors import ModelError
from napari_medattn.inference.memory import DEFAULT_ACTIVATION_BYTES_PER_VOXEL
from napari_medattn.inference.tta import UNCERTAINTY_KINDS

#: ``OutputRequest.keep_probabilities`` value asking for every class.
ALL = "all"


@dataclasses.dataclass(frozen=True)
class WindowOptions:
    """How windows are laid on the volume, run and blended.

    Attributes
    ----------
    overlap : float
        Fraction of a window shared with its neighbour along each axis, in [0, 1).
    batch_size : int
        Windows per forward pass (the memory plan may reduce it).
    blend : {"gaussian", "constant"}
        Weighting of a window's voxels when blending.
    sigma_scale : float
        Gaussian standard deviation as a fraction of the window size.
    skip_empty : bool
        Do not run windows without foreground; they predict background.
    activation : {"softmax", "none"}
        Applied to the predictor output over the class axis; ``"none"`` when the
        predictor already returns probabilities.
    pad_value : float
        Input value used to pad a volume smaller than a window.
    stream : bool
        Finalise slab by slab (True) or keep the whole volume's sums until the end.
    """

    overlap: float = 0.5
    batch_size: int = 4
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    skip_empty: bool = True
    activation: str = "softmax"
    pad_value: float = 0.0
    stream: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise ModelError(f"The overlap must be in [0, 1), got {self.overlap}.")
        if self.batch_size < 1:
            raise ModelError(f"The batch size must be at least 1, got {self.batch_size}.")
        if self.activation not in ("softmax", "none"):
            raise ModelError(f"Unknown activation {self.activation!r}; choose 'softmax' or "
                             f"'none'.")


@dataclasses.dataclass(frozen=True)
class OutputRequest:
    """What a run returns besides the labels.

    Attributes
    ----------
    keep_probabilities : tuple of int or "all"
        Classes whose blended probability is returned for the whole volume.
    tta : bool or sequence of sequences of int
        Test-time flips (see :func:`.tta.flip_members`).
    uncertainty : {None, "variance", "entropy"}
        Uncertainty map to return (see :mod:`.tta`); ``"variance"`` needs ``tta``.
    attention_maps : tuple of str
        Names of spatial attention maps the network records (see
        :func:`napari_medattn.models.capture_attention`) to return for the whole volume;
        captured on the unflipped forward pass.
    """

    keep_probabilities: tuple[int, ...] | str = ()
    tta: bool | Sequence[Sequence[int]] = False
    uncertainty: str | None = None
    attention_maps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.keep_probabilities != ALL:
            object.__setattr__(self, "keep_probabilities",
                               tuple(int(c) for c in self.keep_probabilities))
        object.__setattr__(self, "attention_maps", tuple(self.attention_maps))
        if self.uncertainty is not None and self.uncertainty not in UNCERTAINTY_KINDS:
            raise ModelError(f"Unknown uncertainty {self.uncertainty!r}; choose one of "
                             f"{', '.join(UNCERTAINTY_KINDS)}.")


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """The memory a run plans against (see :func:`.memory.plan_inference`).

    Attributes
    ----------
    check : bool
        Plan the job against free memory first (reducing the batch or moving the blending
        to RAM when needed, refusing when nothing fits).
    activation_bytes_per_voxel : int
        Peak activation bytes per window voxel of the network.
    free_ram, free_gpu : int, optional
        Bytes of free RAM / GPU memory to plan against (default: measured at the start).
    """

    check: bool = True
    activation_bytes_per_voxel: int = DEFAULT_ACTIVATION_BYTES_PER_VOXEL
    free_ram: int | None = None
    free_gpu: int | None = None
