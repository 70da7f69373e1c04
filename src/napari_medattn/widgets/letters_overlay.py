"""The four orientation letters of a canvas as one napari overlay drawn by one text visual.

Four napari ``TextOverlay`` objects (one per edge) cost four text draws per canvas per
frame; with the three linked planes that was 12 draws per repaint, plus those of the
picking pass vispy renders on every mouse press, and a fifth of a click's time (measured
in ``benchmarks/bench_fusion.py``). vispy's text visual draws any number of strings at
their own positions in one call, so the letters are one overlay here.

napari has no public way to add an overlay type; like napari-orthogonal-views (which this
package depends on for the three planes) this registers the visual in napari's
``overlay_to_visual`` table.
"""

from __future__ import annotations

from typing import Any

from napari._vispy.overlays.base import ViewerOverlayMixin, VispyCanvasOverlay
from napari._vispy.utils.visual import overlay_to_visual
from napari._vispy.visuals.text import Text
from napari.components.overlays import CanvasOverlay

#: Distance of each letter from its edge, in canvas pixels (between the edge and the
#: letter's near side).
MARGIN_PX = 10.0


class OrientationLettersOverlay(CanvasOverlay):
    """Letters at the middle of the top, bottom, left and right edges of the canvas.

    Attributes
    ----------
    top, bottom, left, right : str
        The letter at each edge ("" for none).
    color : str
        Text colour.
    font_size : float
        Font size in points.
    """

    top: str = ""
    bottom: str = ""
    left: str = ""
    right: str = ""
    color: str = "#ffd700"
    font_size: float = 16
    # Not a napari CanvasPosition: napari's tiling leaves the overlay alone (as it does
    # its cursor overlay); it spans the canvas and places each letter itself.
    position: str = "edges"


class VispyOrientationLettersOverlay(ViewerOverlayMixin, VispyCanvasOverlay):
    """One vispy text visual holding the four letters, placed from the canvas size."""

    overlay: OrientationLettersOverlay

    def __init__(self, *, font_info: Any, **kwargs: Any) -> None:
        super().__init__(node=Text(pos=(0, 0), font_info=font_info, anchor_x="center",
                                   anchor_y="center"), font_info=font_info, **kwargs)
        self.overlay.events.connect(self._on_letters_change)
        self.viewer.canvas.events.size.connect(self._on_letters_change)
        self.reset()

    def _on_letters_change(self, event: Any = None) -> None:
        overlay, node = self.overlay, self.node
        node.font_size = overlay.font_size
        node.color = overlay.color
        height, width = self.viewer.canvas.size
        half = node.get_line_height() / 2
        places = {"top": (width / 2, MARGIN_PX + half),
                  "bottom": (width / 2, height - MARGIN_PX - half),
                  "left": (MARGIN_PX + half, height / 2),
                  "right": (width - MARGIN_PX - half, height / 2)}
        shown = [(getattr(overlay, side), xy) for side, xy in places.items()
                 if getattr(overlay, side)]
        # vispy's text visual draws nothing (and refuses no input) for an empty list.
        node.text = [text for text, _ in shown] or ""
        if shown:
            node.pos = [xy for _, xy in shown]
        node.update()

    def reset(self) -> None:
        super().reset()
        self._on_letters_change()


overlay_to_visual[OrientationLettersOverlay] = VispyOrientationLettersOverlay
