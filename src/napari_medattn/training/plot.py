"""The training-curve figure: loss per epoch and validation scores, as a PNG."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_medattn.io.atomic import atomic_path


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                title: str = "") -> Path:
    """Write a PNG of the training loss and the validation Dice / HD95 per epoch.

    Parameters
    ----------
    history : sequence of mapping
        One entry per epoch with ``"epoch"`` and ``"loss"``, and optionally
        ``"val_dice"`` (mean foreground Dice, 0-1), ``"val_dice_<class>"`` and
        ``"val_hd95_mm"`` (mm).
    path : path-like
        Output file; written under a temporary name and renamed.
    title : str
        Figure title (e.g. the model name).

    Returns
    -------
    Path
        ``path``.
    """
    # The object-oriented API with the Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [int(h["epoch"]) for h in history]
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, val_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [h["loss"] for h in history], "o-", color="#4363d8", label="train")
    loss_axes.set(xlabel="epoch", ylabel="Dice + cross-entropy loss", title="training loss")
    loss_axes.grid(alpha=0.3)

    def finite(key: str) -> tuple[list[int], list[float]]:
        pairs = [(e, float(h[key])) for e, h in zip(epochs, history)
                 if key in h and math.isfinite(float(h[key]))]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    class_keys = sorted({k for h in history for k in h
                         if k.startswith("val_dice_")})
    for key in class_keys:
        val_axes.plot(*finite(key), ".--", alpha=0.6, label=key[len("val_dice_"):])
    if any("val_dice" in h for h in history):
        val_axes.plot(*finite("val_dice"), "o-", color="black", label="mean")
        val_axes.legend(loc="lower right", fontsize=8)
    else:
        val_axes.text(0.5, 0.5, "no validation cases", ha="center", va="center",
                      transform=val_axes.transAxes)
    val_axes.set(xlabel="epoch", ylabel="Dice", ylim=(0, 1), title="validation Dice")
    val_axes.grid(alpha=0.3)
    if any("val_hd95_mm" in h for h in history):
        hd_axes = val_axes.twinx()
        hd_axes.plot(*finite("val_hd95_mm"), "s:", color="#e6194b", alpha=0.7)
        hd_axes.set_ylabel("mean HD95 (mm)", color="#e6194b")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return path
