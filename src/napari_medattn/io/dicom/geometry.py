"""Placing DICOM slices in the patient: slice order, exact affine, refusal of bad stacks.

A DICOM series is a set of 2D planes, each with its own Image Position (Patient) (the
centre of its first pixel, LPS mm) and Image Orientation (Patient) (row and column
direction cosines). A stack of them is a volume only when the planes share orientation
and pixel spacing and their positions advance by one constant step. That step need not be
along the slice normal: CT with gantry tilt steps obliquely, which a sheared affine
represents exactly, so nothing is resampled.
"""

from __future__ import annotations

import numpy as np

from napari_medattn.errors import GeometryError, ReadError

# Positions are decimal strings of at most 16 characters: allow for their rounding.
POSITION_TOLERANCE_MM = 0.01
RELATIVE_STEP_TOLERANCE = 1e-3
# Cosines that differ by less than this are the same orientation (DS rounding).
ORIENTATION_TOLERANCE = 1e-4
# Steps within this angle (degrees) of the slice normal are not reported as sheared.
SHEAR_TOLERANCE_DEG = 0.01


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal of a plane from its 6 Image Orientation (Patient) cosines (row x column)."""
    orientation = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:6])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise GeometryError("The image orientation has parallel row and column directions.")
    return normal / norm


def check_same(values: list, what: str, series: str, tolerance: float) -> np.ndarray:
    """The common value of ``values`` (arrays), or a one-sentence ReadError naming two."""
    first = np.asarray(values[0], dtype=np.float64)
    stacked = np.asarray(values, dtype=np.float64)  # one vectorised test for 1000s of slices
    differs = np.any(np.abs(stacked - first) > tolerance,
                     axis=tuple(range(1, stacked.ndim)))
    if np.any(differs):
        other = stacked[int(np.argmax(differs))]
        raise ReadError(
            f"Series {series} mixes {what} ({_fmt(first)} and {_fmt(other)}); it cannot "
            f"be one volume."
        )
    return first


def stack_geometry(
    positions: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: np.ndarray,
    *,
    series: str,
    single_slice_step: float | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Order slices and build the exact array-order LPS affine of the stack.

    Parameters
    ----------
    positions : (n, 3) ndarray
        Image Position (Patient) of each slice (mm, LPS), in any order. Each position
        appears once (repeated positions are frames, handled by the caller).
    orientation : (6,) ndarray
        Row then column direction cosines shared by all slices.
    pixel_spacing : (2,) ndarray
        Pixel Spacing: distance between rows, then between columns (mm).
    series : str
        Series name for messages.
    single_slice_step : float, optional
        Slice thickness (mm) to use when the stack has a single slice.

    Returns
    -------
    order : (n,) ndarray of int
        Indices of ``positions`` sorted along the slice normal.
    affine : (4, 4) ndarray
        Index ``(slice, row, column)`` -> LPS mm. The slice column is the measured step
        between consecutive positions, so it is sheared when the stack is tilted.
    warnings : list of str
        Sentences for the user (sheared geometry, assumed thickness).

    Raises
    ------
    GeometryError
        Uneven spacing (missing slices) or positions off a straight line.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    orientation = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:6]
    normal = slice_normal(orientation)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    warnings: list[str] = []
    affine = np.eye(4)
    # Array axis 1 walks down the rows (column direction), axis 2 along a row.
    affine[:3, 1] = col_dir * pixel_spacing[0]
    affine[:3, 2] = row_dir * pixel_spacing[1]
    affine[:3, 3] = positions[0]
    if len(positions) == 1:
        thickness = single_slice_step if single_slice_step and single_slice_step > 0 else 1.0
        if not single_slice_step:
            warnings.append(f"Series {series} is a single slice without a thickness; "
                            f"1 mm is assumed.")
        affine[:3, 0] = normal * thickness
        return order, affine, warnings
    gaps = np.diff(along)
    if np.any(gaps <= POSITION_TOLERANCE_MM):
        index = int(np.argmax(gaps <= POSITION_TOLERANCE_MM))
        raise GeometryError(f"Series {series} has two slices at the same position "
                            f"(slice {index + 1}).")
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    tolerance = max(POSITION_TOLERANCE_MM, RELATIVE_STEP_TOLERANCE * float(np.linalg.norm(step)))
    uneven = np.abs(gaps - gaps[0]) > tolerance
    if np.any(uneven):
        index = int(np.argmax(uneven))
        raise GeometryError(
            f"Series {series}: slice spacing varies from {gaps.min():.4g} to {gaps.max():.4g} "
            f"mm at slice {index + 1}: missing slices?"
        )
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    off_line = np.linalg.norm(positions - expected, axis=1)
    if np.any(off_line > tolerance):
        index = int(np.argmax(off_line))
        raise GeometryError(
            f"Series {series}: slice {index + 1} lies {off_line[index]:.3g} mm off the line "
            f"through the other slice positions; the stack is not one regular volume."
        )
    affine[:3, 0] = step
    tilt = np.degrees(np.arccos(np.clip(abs(step @ normal) / np.linalg.norm(step), -1, 1)))
    if tilt > SHEAR_TOLERANCE_DEG:
        warnings.append(
            f"Series {series} is sheared (slices step {tilt:.2f} degrees off their normal, "
            f"e.g. gantry tilt): the affine keeps it exact, the 2D view shows it on the "
            f"nearest axis-aligned grid."
        )
    return order, affine, warnings


def _fmt(value: np.ndarray) -> str:
    values = np.ravel(value) + 0.0  # + 0.0 turns -0 into 0
    if values.size == 2 and np.all(values == np.round(values)):
        return "x".join(f"{v:g}" for v in values)  # matrix sizes: 512x512
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
