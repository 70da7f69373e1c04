"""Radiological screen orientation for napari's world axes (z, y, x) in LPS mm.

The data are never flipped for display: the camera decides which way each displayed world
axis runs on screen. napari's ``camera.orientation`` is ``(depth, vertical, horizontal)``;
``vertical='down'`` means values of the vertical (first displayed) axis grow downwards and
``horizontal='right'`` that values of the horizontal (second displayed) axis grow to the
right. With world z = Superior+, y = Posterior+, x = Left+ the radiological conventions are:

=========  ===========  ========  ==========  ===========================================
view       displayed    vertical  horizontal  on screen
=========  ===========  ========  ==========  ===========================================
axial      (y, x)       down      right       anterior up, patient right on screen left
coronal    (z, x)       up        right       superior up, patient right on screen left
sagittal   (z, y)       up        right       superior up, anterior on screen left
=========  ===========  ========  ==========  ===========================================

Functions take *spatial* world axes (0 = z, 1 = y, 2 = x); the napari glue converts from
dims indices (4D volumes put frames in front of the spatial axes).
"""

from __future__ import annotations

import numpy as np

from napari_medattn.errors import DimensionError
from napari_medattn.io.volume import NEGATIVE_LETTERS, POSITIVE_LETTERS, WORLD_TO_LPS

#: Names of the 2D views by their displayed spatial axes (vertical, horizontal).
VIEW_NAMES = {(1, 2): "axial", (0, 2): "coronal", (0, 1): "sagittal"}


def canonical_pair(axes: tuple[int, int]) -> tuple[int, int]:
    """The displayed pair in canonical order: z above y above x as the vertical axis.

    napari's transpose button swaps the displayed axes; a radiological view always puts
    the more cranio-caudal/antero-posterior axis vertical, so the pair is sorted.
    """
    return (min(axes), max(axes))


def radiological_orientation_2d(vertical: int, horizontal: int) -> tuple[str, str]:
    """Camera ``(vertical, horizontal)`` directions for a displayed pair of spatial axes.

    Parameters
    ----------
    vertical, horizontal : int
        Spatial world axes (0 = z superior+, 1 = y posterior+, 2 = x left+) shown
        vertically and horizontally.

    Returns
    -------
    (str, str)
        ``'up'``/``'down'`` and ``'left'``/``'right'`` for napari's camera.
    """
    # Superior is up in coronal and sagittal views; anterior (-y) is up in axial views.
    if horizontal < vertical:
        raise DimensionError("The displayed axes must be in canonical order (z or y vertical).")
    # Superior is up in coronal and sagittal views; anterior (-y) is up in axial views.
    # The horizontal axis is x (left+) or y (posterior+): growing to the right puts the
    # patient's right (axial, coronal) or anterior side (sagittal) on screen left.
    return ("up" if vertical == 0 else "down"), "right"


def edge_letters(
    vertical: int, horizontal: int, vertical_dir: str, horizontal_dir: str
) -> dict[str, str]:
    """Patient direction letters at the four canvas edges.

    Parameters
    ----------
    vertical, horizontal : int
        Displayed spatial world axes (0 = z, 1 = y, 2 = x).
    vertical_dir, horizontal_dir : str
        The camera's ``'up'``/``'down'`` and ``'left'``/``'right'``.

    Returns
    -------
    dict
        Keys ``'top'``, ``'bottom'``, ``'left'``, ``'right'``; e.g. an axial view gives
        ``{'top': 'A', 'bottom': 'P', 'left': 'R', 'right': 'L'}``.
    """
    v_pos, v_neg = _letters(vertical)
    h_pos, h_neg = _letters(horizontal)
    # The edge an axis grows towards shows the + letter of that axis.
    top, bottom = (v_neg, v_pos) if vertical_dir == "down" else (v_pos, v_neg)
    left, right = (h_neg, h_pos) if horizontal_dir == "right" else (h_pos, h_neg)
    return {"top": top, "bottom": bottom, "left": left, "right": right}


def _letters(world_axis: int) -> tuple[str, str]:
    lps = WORLD_TO_LPS[world_axis]
    return POSITIVE_LETTERS[lps], NEGATIVE_LETTERS[lps]


def depth_direction_3d(
    displayed: tuple[int, int, int], vertical_dir: str, horizontal_dir: str
) -> str:
    """The camera depth direction that makes a 3D rendering a rotation, not a mirror image.

    Parameters
    ----------
    displayed : (int, int, int)
        Spatial world axes shown as (depth, vertical, horizontal).
    vertical_dir, horizontal_dir : str
        The camera's vertical and horizontal directions.

    Returns
    -------
    str
        ``'away'`` or ``'towards'``. The screen frame (right, down, away) is right-handed;
        LPS is right-handed; the depth sign is chosen so the map between them has
        determinant +1.
    """
    depth, vert, horiz = displayed
    columns = np.zeros((3, 3))
    # Screen basis vectors (right, down, away) written in LPS coordinates.
    columns[WORLD_TO_LPS[horiz], 0] = 1.0 if horizontal_dir == "right" else -1.0
    columns[WORLD_TO_LPS[vert], 1] = 1.0 if vertical_dir == "down" else -1.0
    columns[WORLD_TO_LPS[depth], 2] = 1.0
    return "away" if np.linalg.det(columns) > 0 else "towards"


def patient_position_text(world_zyx) -> str:
    """A patient position in clinical words: each coordinate with the side it lies on.

    Parameters
    ----------
    world_zyx : sequence of float
        napari world position (z, y, x) in LPS mm.

    Returns
    -------
    str
        E.g. ``"R 12.0  A 30.5  S 40.0 mm"`` for LPS (x, y, z) = (-12, -30.5, 40): the
        x (right/left), y (anterior/posterior) and z (inferior/superior) distances from
        the scanner origin, in the order DICOM lists patient coordinates.
    """
    parts = []
    for world_axis in (2, 1, 0):
        value = float(world_zyx[world_axis])
        positive, negative = _letters(world_axis)
        parts.append(f"{positive if value >= 0 else negative} {abs(value):.1f}")
    return "  ".join(parts) + " mm"
