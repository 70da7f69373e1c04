"""``explain()``: one call from a volume, a model and a method name to maps on the source
geometry, optionally with the numbers that say whether each map is telling."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.explain.cam import CAM_METHODS, gradient_cam
from napari_medattn.explain.faithfulness import Faithfulness, noisy_image
from napari_medattn.explain.faithfulness import faithfulness as faithfulness_of
from napari_medattn.explain.grid import ModelGrid, window_maps
from napari_medattn.explain.layers import METHODS, applicable_methods, layers_for
from napari_medattn.explain.native import (
    NATIVE_METHODS,
    channel_map,
    quantity_of,
    routing_maps,
    spatial_maps,
)
from napari_medattn.explain.occlusion import occlusion_map
from napari_medattn.explain.rollout import rollout_map
from napari_medattn.inference.window_options import MemoryBudget
from napari_medattn.io.volume import Volume
from napari_medattn.models.card import ModelCard

#: What a missing layer means for each method, for the "does not apply" sentence.
_NEEDS = {"gate": "attention gates", "cbam": "CBAM blocks",
          "channels": "SE, ECA, CBAM or scSE channel attention",
          "dssa": "DSSA attention blocks",
          "rollout": "a ViT encoder (a list of global-attention transformer blocks)"}
_NEEDS.update({m: "a layer with a spatial feature map" for m in CAM_METHODS})


@dataclasses.dataclass
class ExplanationMap:
    """One explanation map on the source geometry.

    Attributes
    ----------
    volume : Volume
        float32 map with the source image's spatial shape and affine; ``meta["name"]``
        says what it is (image, model, method, layer, class).
    method : str
        One of :data:`METHODS`.
    layer : str or None
        Module path the map comes from (None for occlusion).
    target : int or None
        Class explained (None for the class-free native maps and rollout).
    channel_weights : ndarray or None
        ``(C,)`` channel weights in [0, 1] for ``"channels"``.
    faithfulness : Faithfulness or None
        Deletion, insertion, stability and verdict, when asked for.
    """

    volume: Volume
    method: str
    layer: str | None
    target: int | None
    channel_weights: np.ndarray | None = None
    faithfulness: Faithfulness | None = None


def check_request(model: nn.Module, card: ModelCard, method: str, layer: str | None,
                  target_class: int | None) -> tuple[list[str | None], int]:
    """The layers a request runs on and its target class, or one sentence why not.

    Raises
    ------
    ModelError
        Unknown method, a method that does not apply to ``model`` (naming those that do),
        a layer the method cannot use, a class the model does not predict.
    """
    if method not in METHODS:
        raise ModelError(f"Unknown explanation method {method!r}; choose one of "
                         f"{', '.join(METHODS)}.")
    available = layers_for(model, method)
    if method != "occlusion" and not available:
        raise ModelError(f"{method} does not apply to {card.name}, which has no "
                         f"{_NEEDS[method]}; methods that apply: "
                         f"{', '.join(applicable_methods(model))}.")
    if layer is not None and method != "occlusion" and layer not in available:
        raise ModelError(f"{method} cannot use layer {layer!r} of {card.name}; it can use: "
                         f"{', '.join(available)}.")
    if method == "occlusion":
        layers: list[str | None] = [None]
    elif layer is not None:
        layers = [layer]
    elif method in NATIVE_METHODS:
        # One forward pass yields every level of a native map: return them all.
        layers = list(available)
    else:
        layers = [available[0]]
    target = (1 if card.num_classes > 1 else 0) if target_class is None else int(target_class)
    if not 0 <= target < card.num_classes:
        raise ModelError(f"Class {target} does not exist; {card.name} predicts "
                         f"{card.num_classes} classes (0 to {card.num_classes - 1}).")
    return layers, target


def explain(volume: Volume, model: nn.Module, card: ModelCard, method: str, *,
            target_class: int | None = None, region: np.ndarray | None = None,
            layer: str | None = None, device: str = "auto", faithfulness: bool = False,
            memory: MemoryBudget = MemoryBudget(),
            progress: Callable[[int, int], None] | None = None,
            cancel: Callable[[], bool] | None = None) -> list[ExplanationMap]:
    """Explanation maps of ``model``'s prediction on ``volume``, on the source geometry.

    The volume is preprocessed as :func:`napari_medattn.inference.segment` does (reoriented,
    resampled to the card's spacing, normalised); the method runs on the same windows as
    segmentation, blended by the sliding-window engine (see :mod:`.grid` for why), and the
    map is resampled back to the source grid with linear interpolation.

    Parameters
    ----------
    volume : Volume
        3D image (or 4D with the card's input channels first).
    model : nn.Module
        The network (e.g. from :func:`napari_medattn.models.registry.load_model`): a
        segmentation network, or a scan classifier (logits ``(B, C)``, card task
        ``"classification"``), whose class logit is then the score explained.
    card : ModelCard
        Its card; 3D models only.
    method : str
        One of :data:`METHODS`: ``gradcam``, ``gradcam++``, ``hirescam``, ``layercam``
        (class-activation maps, see :mod:`.cam`), ``gate``, ``cbam``, ``channels``,
        ``dssa`` (native maps, see :mod:`.native`), ``rollout`` (see :mod:`.rollout`),
        ``occlusion`` (see :mod:`.occlusion`).
    target_class : int, optional
        Class explained; default the first foreground class (1).
    region : ndarray of bool, optional
        Mask on the source grid restricting the target to a region (segmentation models);
        default the whole window.
    layer : str, optional
        Module path (see :func:`layers_for`). Default: the method's default layer; for the
        native methods (gate, cbam, channels, dssa) every level, one map each.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``.
    faithfulness : bool
        Also compute deletion/insertion areas, stability and the verdict (see
        :mod:`.faithfulness`): the map once more (on the noisy image) and nine forward
        passes per window, about 6x the time of a gradient map on a CPU.
    memory : MemoryBudget
        The memory each pass over the windows is planned against (default: the free RAM
        and GPU memory measured at its start; a cohort worker passes its share of its
        limit).
    progress : callable, optional
        ``progress(done, total)`` in arbitrary units.
    cancel : callable, optional
        Returns True to stop; :class:`~napari_medattn.errors.Cancelled` is raised.

    Returns
    -------
    list of ExplanationMap
        One per layer: CAM maps and rollout scaled to [0, 1] by their maximum, occlusion
        by its largest absolute value (signed), native maps in their own [0, 1] units.

    Raises
    ------
    ModelError
        Unknown method, a method that does not apply to the model (the sentence names
        those that do), an unknown layer or class.
    DimensionError
        A 2D model, channels that differ from the card's, a region of another shape.
    Cancelled
        When ``cancel`` fires.
    """
    layers, target = check_request(model, card, method, layer, target_class)
    grid = ModelGrid.from_volume(volume, card)
    region_grid = grid.region_on_grid(region) if region is not None else None
    runs_per_layer = (1 if method in ("gate", "cbam", "dssa") else len(layers))
    stages = runs_per_layer * (2 if faithfulness else 1) + (len(layers) if faithfulness else 0)
    runner = _Runner(grid, model, card, method, layers, target, region_grid, device, memory,
                     _StageProgress(stages, progress), cancel)
    maps = runner.maps(grid.image)
    noisy = runner.maps(noisy_image(grid.image)) if faithfulness else {}
    # Native maps and rollout do not depend on a class (rollout follows the region only).
    class_free = method in (*NATIVE_METHODS, "rollout")
    out = []
    for name in layers:
        saliency, weights = maps[name]
        scores = None
        if faithfulness:
            scores = faithfulness_of(grid, model, card, saliency, noisy[name][0],
                                     target_class=target, region=region_grid, device=device,
                                     memory=memory, progress=runner.progress, cancel=cancel)
            runner.progress.done_stages += 1
        label = " ".join(str(part) for part in (
            volume.name, card.name, method, name,
            None if class_free else card.class_names[target]) if part is not None)
        out.append(ExplanationMap(grid.to_source(_display_scale(saliency, method), label),
                                  method, name, None if class_free else target,
                                  channel_weights=weights, faithfulness=scores))
    if progress is not None:
        progress(stages * 100, stages * 100)
    return out


@dataclasses.dataclass
class _StageProgress:
    """``progress(done, total)`` of one stage (a pass over the windows) reported as a
    share of all ``stages``, 100 units each."""

    stages: int
    progress: Callable[[int, int], None] | None
    done_stages: int = 0

    def __call__(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(self.done_stages * 100 + (100 * done) // max(total, 1),
                          self.stages * 100)


@dataclasses.dataclass
class _Runner:
    """One :func:`explain` request's passes over the windows, each one stage."""

    grid: ModelGrid
    model: nn.Module
    card: ModelCard
    method: str
    layers: list[str | None]
    target: int
    region: np.ndarray | None
    device: str
    memory: MemoryBudget
    progress: _StageProgress
    cancel: Callable[[], bool] | None

    def window_map(self, fn, image: np.ndarray, gradients: bool = True) -> np.ndarray:
        """``fn(batch, region)`` over the windows of ``image``, blended on the model grid."""
        out = window_maps(self.grid, self.model, self.card, fn, image=image,
                          region=self.region, device=self.device, gradients=gradients,
                          memory=self.memory, progress=self.progress, cancel=self.cancel)[0]
        self.progress.done_stages += 1
        return out

    def maps(self, image: np.ndarray) -> dict[str | None, tuple[np.ndarray, np.ndarray | None]]:
        """Every requested layer's map on the model grid (and channel weights)."""
        model, card, method, target = self.model, self.card, self.method, self.target
        shifted = dataclasses.replace(self.grid, image=image)
        options = {"device": self.device, "memory": self.memory, "progress": self.progress,
                   "cancel": self.cancel}
        if method in ("gate", "cbam"):
            names = {quantity_of(model, name, method): name for name in self.layers}
            spatial = spatial_maps(shifted, model, card, list(names), **options)
            self.progress.done_stages += 1
            return {names[n]: (spatial[n], None) for n in names}
        if method == "dssa":
            routed = routing_maps(shifted, model, card, self.layers, **options)
            self.progress.done_stages += 1
            return {name: (routed[name], None) for name in self.layers}
        result: dict[str | None, tuple[np.ndarray, np.ndarray | None]] = {}
        for name in self.layers:
            if method == "channels":
                weights, vol = channel_map(shifted, model, card, name, **options)
                self.progress.done_stages += 1
                result[name] = (vol, weights)
            elif method in CAM_METHODS:
                result[name] = (self.window_map(lambda b, r, n=name: gradient_cam(
                    model, b, n, method, target_class=target, region=r)[:, None], image), None)
            elif method == "rollout":
                result[name] = (self.window_map(
                    lambda b, r, n=name: rollout_map(model, b, n, r)[:, None], image,
                    gradients=False), None)
            else:
                result[name] = (self.window_map(lambda b, r: occlusion_map(
                    model, b, target_class=target, region=r)[:, None], image,
                    gradients=False), None)
        return result


def _display_scale(saliency: np.ndarray, method: str) -> np.ndarray:
    """CAM and rollout maps to [0, 1] by their maximum, occlusion to [-1, 1] by its largest
    magnitude; native maps keep their own units."""
    if method in NATIVE_METHODS:
        return saliency.astype(np.float32)
    peak = float(np.abs(saliency).max())
    return (saliency / peak if peak > 0 else saliency).astype(np.float32)
