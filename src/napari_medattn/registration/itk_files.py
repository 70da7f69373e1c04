"""Transform files other tools read: ITK transform files and displacement-field NIfTI.

* Linear transforms are written as ITK ``AffineTransform_double_3_3`` text files
  (``.tfm`` / ``.txt``; ``.mat`` gives ITK's binary form, ANTs' format). ITK's transform
  files map fixed LPS mm to moving LPS mm, exactly our convention, so the matrix is
  written unchanged (centre 0). SimpleITK, ANTs and 3D Slicer read them.
* Displacement fields are written as ITK writes them: a NIfTI vector image (intent 1007,
  5D ``(i, j, k, 1, 3)``) whose header places the grid (ITK converts LPS to NIfTI's RAS)
  and whose vectors are displacements in **LPS** mm, unconverted, as ITK and ANTs store
  them. SimpleITK's ``DisplacementFieldTransform`` and ANTs read them.

SimpleITK does the file work (it is the reference reader of these formats); files appear
whole or not at all (:func:`napari_medattn.io.atomic.atomic_path`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medattn.errors import GeometryError, ReadError, WriteError
from napari_medattn.io.atomic import atomic_path
from napari_medattn.registration.transforms import (
    CompositeTransform,
    DisplacementField,
    LinearTransform,
    grid_points,
)

LINEAR_SUFFIXES = (".tfm", ".txt", ".mat")
FIELD_SUFFIXES = (".nii", ".nii.gz")
#: Least fraction of the fixed grid a displacement field must cover to be applied to it.
MIN_FIELD_COVER = 0.5


def write_transform(path: str | os.PathLike, transform) -> Path:
    """Write a :class:`LinearTransform` (ITK transform file) or a
    :class:`DisplacementField` (ITK displacement-field NIfTI).

    Raises
    ------
    WriteError
        The file name does not fit the transform kind, or the write failed.
    """
    path = Path(path)
    name = path.name.lower()
    if isinstance(transform, LinearTransform):
        if not name.endswith(LINEAR_SUFFIXES):
            raise WriteError(f"A linear transform is written as {'/'.join(LINEAR_SUFFIXES)}, "
                             f"not {path.name}.")
        itk = sitk.AffineTransform(3)
        itk.SetMatrix(transform.matrix[:3, :3].reshape(-1).tolist())
        itk.SetTranslation(transform.matrix[:3, 3].tolist())
        return _atomic(path, lambda temporary: sitk.WriteTransform(itk, str(temporary)))
    if isinstance(transform, DisplacementField):
        if not name.endswith(FIELD_SUFFIXES):
            raise WriteError(f"A displacement field is written as .nii or .nii.gz, not "
                             f"{path.name}.")
        image = field_image(transform)
        return _atomic(path, lambda temporary: sitk.WriteImage(image, str(temporary)))
    raise WriteError(f"Cannot write a {type(transform).__name__}; bake it into a "
                     f"displacement field first.")


def _atomic(path: Path, write) -> Path:
    try:
        with atomic_path(path) as temporary:
            write(temporary)
    except RuntimeError as error:  # SimpleITK reports every I/O failure as RuntimeError
        raise WriteError(f"Could not write {path.name}: {str(error).strip().splitlines()[-1]}"
                         ) from None
    return path


def field_image(field: DisplacementField) -> sitk.Image:
    """The field as a SimpleITK vector image (index order = our array-axis order)."""
    # SimpleITK arrays are (k, j, i, component): reverse the three grid axes.
    array = np.ascontiguousarray(np.transpose(field.displacement, (3, 2, 1, 0)), np.float64)
    image = sitk.GetImageFromArray(array, isVector=True)
    spacing = np.linalg.norm(field.affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((field.affine[:3, :3] / spacing).reshape(-1).tolist())
    image.SetOrigin(field.affine[:3, 3].tolist())
    return image


def read_transform(path: str | os.PathLike):
    """Read an ITK linear transform file or a displacement-field NIfTI (ours or ITK's/
    ANTs'); returns a :class:`LinearTransform` or :class:`DisplacementField` (fixed mm ->
    moving mm).

    Raises
    ------
    ReadError
        The file is missing, unreadable, or holds another kind of data (e.g. an image
        that is not a 3-component displacement field, or a non-linear ITK transform).
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path} does not exist.")
    name = path.name.lower()
    if name.endswith(FIELD_SUFFIXES):
        return _read_field(path)
    try:
        itk = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise ReadError(f"{path.name} is not an ITK transform file or displacement-field "
                        f"NIfTI.") from None
    return _linear_from_itk(itk, path.name)


def _read_field(path: Path) -> DisplacementField:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise ReadError(f"{path.name} is not a readable NIfTI file.") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise ReadError(f"{path.name} is an image, not a displacement field (a 3D grid of "
                        f"3-component vectors).")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    displacement = np.transpose(array, (3, 2, 1, 0))
    affine = np.eye(4)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return DisplacementField(displacement, affine)


def _linear_from_itk(itk: sitk.Transform, name: str) -> LinearTransform:
    """A linear ITK transform (any class) as a matrix, read off mapped points."""
    probe = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], dtype=np.float64)
    try:
        mapped = np.array([itk.TransformPoint(p.tolist()) for p in probe])
        check = np.array(itk.TransformPoint([37.0, -52.0, 81.0]))
    except RuntimeError:
        raise ReadError(f"{name} holds a transform that cannot be evaluated here.") from None
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T / 100.0
    if not np.allclose(matrix[:3, :3] @ [37.0, -52.0, 81.0] + matrix[:3, 3], check, atol=1e-4):
        raise ReadError(f"{name} holds a non-linear ITK transform; save deformable "
                        f"transforms as displacement-field NIfTI.")
    return LinearTransform(matrix, "affine")


def check_fits(transform, affine: np.ndarray, shape: tuple[int, ...]) -> None:
    """Refuse a displacement field made for another grid: it must cover at least
    :data:`MIN_FIELD_COVER` of the grid ``(affine, shape)`` it is applied on.

    Raises
    ------
    GeometryError
    """
    parts = transform.transforms if isinstance(transform, CompositeTransform) else [transform]
    step = max(1, int(round((np.prod(shape) / 20_000) ** (1 / 3))))
    points = grid_points(affine, shape)[::step, ::step, ::step].reshape(-1, 3)
    for part in parts:
        if isinstance(part, DisplacementField):
            to_index = np.linalg.inv(part.affine)
            index = points @ to_index[:3, :3].T + to_index[:3, 3]
            inside = np.all((index > -0.5) & (index < np.asarray(part.shape) - 0.5), axis=1)
            if inside.mean() < MIN_FIELD_COVER:
                raise GeometryError(
                    f"The displacement field was made for another grid: it covers "
                    f"{100 * inside.mean():.0f} % of the target scan.")
            points = part(points)
        else:
            points = part(points)
