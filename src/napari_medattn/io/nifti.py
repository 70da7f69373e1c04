"""NIfTI-1/2 reading and writing with the exact source geometry.

Reading keeps the array in file order (i, j, k[, t]) and converts the best affine
(sform when its code is > 0, else qform, as ``nibabel``'s ``get_best_affine``) from RAS to
LPS. Writing undoes a :meth:`Volume.canonical` view and reuses the source header, so a
label map drawn on a scan lands in a file with that scan's array order, affine and
qform/sform codes.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_medattn.errors import DimensionError, GeometryError, ReadError, WriteError
from napari_medattn.io.atomic import atomic_path
from napari_medattn.io.volume import RAS_TO_LPS, Volume, reorient_affine

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: NIfTI intent code for label maps (NIFTI_INTENT_LABEL).
INTENT_LABEL = 1002
# Modality words recognised in the NIfTI description field (NIfTI has no modality tag).
_DESCRIPTION_MODALITY = {"CT": "CT", "MR": "MR", "MRI": "MR", "PET": "PT", "PT": "PT"}


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a NIfTI file name (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | os.PathLike, *, modality: str | None = None) -> Volume:
    """Read a NIfTI file into a :class:`Volume` in LPS mm.

    Parameters
    ----------
    path : str or PathLike
        ``.nii`` or ``.nii.gz`` file. Uncompressed unscaled files are memory-mapped.
    modality : str, optional
        DICOM modality code to use instead of the one guessed from the header
        (intent code, description); ``"OT"`` when neither says.

    Returns
    -------
    Volume
        3D ``(i, j, k)`` or 4D ``(t, i, j, k)`` (a zero-copy view with the file's 4th axis
        first). A 2D file becomes a single-slice volume ``(i, j, 1)``.

    Raises
    ------
    ReadError
        The file is missing, truncated or not NIfTI.
    DimensionError
        The image has more than 4 dimensions.
    """
    path = Path(path)
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise ReadError(f"{path} does not exist.") from None
    except Exception as error:  # nibabel raises many unrelated types for a bad header
        raise ReadError(f"{path.name} is not a readable NIfTI file ({_reason(error)}).") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ReadError(f"{path.name} is a {type(image).__name__}, not a NIfTI image.")
    header = image.header
    shape = tuple(int(n) for n in image.shape)
    # Trailing singleton axes beyond the third (e.g. a 4D file with one frame) carry nothing.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise DimensionError(
            f"{path.name} has {len(shape)} dimensions {shape}; at most 4 (3 spatial plus "
            f"time or channels) are supported."
        )
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise ReadError(
            f"{path.name} is truncated or corrupt: its voxel data cannot be read "
            f"({_reason(error)})."
        ) from None
    data = data.reshape(shape + (1,) * (3 - len(shape)))
    if not data.dtype.isnative:
        # torch and most numeric code need native byte order; one copy at read time.
        data = data.astype(data.dtype.newbyteorder("="))
    meta: dict = {
        "source": str(path.resolve()),
        "name": _stem(path),
        "format": "nifti",
        "nifti_header": header.copy(),
        "nifti_shape": tuple(int(n) for n in image.shape),
        "warnings": [],
    }
    # NIfTI has no field for intensity units; a description naming SUV (as PET exports
    # and the synthetic PET sample write) is the file's own statement of them.
    if re.search(r"\bSUV\b", bytes(header["descrip"]).decode("latin-1")):
        meta["units"] = "SUV"
    if data.ndim == 4:
        # Frames first, as the Volume contract says; moveaxis is a view.
        data = np.moveaxis(data, 3, 0)
        meta["frame_axis"] = "time" if header.get_xyzt_units()[1] != "unknown" else "channel"
    affine = RAS_TO_LPS @ header.get_best_affine()
    return Volume(data=data, affine=affine, modality=modality or _guess_modality(header),
                  meta=meta)


def write_nifti(path: str | os.PathLike, volume: Volume, *, source: Volume | None = None) -> Path:
    """Write a volume (image or label map) to NIfTI with the exact source geometry.

    A :meth:`Volume.canonical` view is turned back into the source array order first, so
    the file has the source's array order, affine and, for NIfTI sources, its header
    (qform/sform codes and matrices) bit for bit. The file is written under a temporary
    name in the same folder and renamed, so a failed write leaves nothing half-made. The
    voxels are stored as they are (no rescaling): a source with a scale factor, read as
    floats, is written as those floats, so only its datatype fields change.

    Parameters
    ----------
    path : str or PathLike
        Output file; ``.nii.gz`` is appended when the name has no NIfTI suffix.
    volume : Volume
        The data to write. ``modality == "SEG"`` marks a label map, stored with an
        integer dtype.
    source : Volume, optional
        The scan the volume was made from, when ``volume`` does not carry its metadata
        (e.g. an array wrapped with :func:`volume_like` from another reference). Its
        header and source path are used; the geometry must match.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    WriteError
        The path resolves to the source scan, or the file cannot be written.
    GeometryError
        The volume's affine does not match the source it claims to come from.
    """
    path = Path(path)
    if not is_nifti(path):
        path = path.with_name(path.name + ".nii.gz")
    meta = dict(source.meta) if source is not None else {}
    meta.update({k: v for k, v in volume.meta.items() if v is not None})
    _refuse_overwriting_source(path, meta)
    data, affine = source_order(volume)
    if source is not None:
        source_data, source_affine = source_order(source)
        if data.shape[-3:] != source_data.shape[-3:] or not np.allclose(
                affine, source_affine, rtol=0, atol=1e-6):
            raise GeometryError(
                f"The volume (shape {data.shape[-3:]}) is not on the grid of its source "
                f"{source.name} (shape {source_data.shape[-3:]}); resample it first."
            )
    if data.ndim == 4:
        data = np.moveaxis(data, 0, 3)
    data = np.asarray(data)
    if volume.modality == "SEG" or data.dtype in (np.int64, np.uint64, np.bool_):
        # Labels must be integers; NIfTI tools handle 64-bit integers and bool poorly.
        data = _smallest_integer_array(data)
    header = _header_for(meta.get("nifti_header"), affine, data, meta)
    if data.ndim == 3 and tuple(meta.get("nifti_shape", ())) != data.shape:
        # A 2D source read as (i, j, 1) goes back to its own shape.
        source_shape = tuple(meta.get("nifti_shape", ()))
        if source_shape and np.prod(source_shape) == data.size and len(source_shape) < 3:
            data = data.reshape(source_shape)
    # Nifti2Header subclasses Nifti1Header: test for the newer format first.
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(data, None, header=header)
    if volume.modality == "SEG":
        image.header.set_intent(INTENT_LABEL)
    _atomic_save(image, path)
    return path


def volume_like(reference: Volume, data, *, modality: str = "SEG", name: str | None = None
                ) -> Volume:
    """Wrap an array drawn or computed on ``reference``'s grid as a Volume with its geometry.

    Parameters
    ----------
    reference : Volume
        The volume whose array order and affine ``data`` follows (e.g. the canonical view
        shown in napari).
    data : array
        Same spatial shape as ``reference`` (3D, or 4D with frames first).
    modality : str
        ``"SEG"`` for label maps (written with an integer dtype), or an image modality.
    name : str, optional
        Layer/file name; defaults to the reference name with the modality appended.

    Returns
    -------
    Volume
        Carries the reference's affine and write-back metadata (source header, canonical
        permutation, source path so the scan is never overwritten).

    Raises
    ------
    DimensionError
        The spatial shape differs from the reference.
    """
    data = np.asanyarray(data)
    if data.ndim not in (3, 4) or data.shape[-3:] != reference.spatial_shape:
        raise DimensionError(
            f"The array has shape {data.shape} but the reference {reference.name} has "
            f"spatial shape {reference.spatial_shape}."
        )
    keep = ("source", "source_files", "format", "nifti_header", "nifti_shape",
            "canonical_axes", "source_affine", "source_shape")
    meta = {k: reference.meta[k] for k in keep if k in reference.meta}
    meta["name"] = name or f"{reference.name} {modality}"
    meta["warnings"] = []
    if data.ndim == 4:
        meta["frame_axis"] = reference.meta.get("frame_axis", "channel")
    return Volume(data=data, affine=reference.affine.copy(), modality=modality, meta=meta)


def source_order(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The data and affine of ``volume`` in its source's array order.

    Undoes :meth:`Volume.canonical` (transpose, then the flips) when the metadata says
    the volume is a canonical view; otherwise returns the volume's own data and affine.

    Raises
    ------
    GeometryError
        The volume claims a canonical view but its affine does not follow from the
        source affine (it was resampled or edited without updating the metadata).
    """
    if "canonical_axes" not in volume.meta:
        return volume.data, volume.affine
    perm, flips = volume.meta["canonical_axes"]
    source_affine = np.asarray(volume.meta["source_affine"], dtype=np.float64)
    source_shape = tuple(volume.meta["source_shape"])
    expected = reorient_affine(source_affine, source_shape, perm, flips)
    if not np.allclose(expected, volume.affine, rtol=0, atol=1e-6):
        raise GeometryError(
            f"{volume.name} says it is a reoriented view of its source but its affine no "
            f"longer matches the source geometry."
        )
    lead = volume.data.ndim - 3
    inverse = np.argsort(perm)
    data = volume.data.transpose(tuple(range(lead)) + tuple(lead + int(i) for i in inverse))
    for axis in np.nonzero(flips)[0]:
        data = np.flip(data, lead + int(axis))
    if data.shape[-3:] != source_shape:
        raise GeometryError(
            f"{volume.name} has shape {data.shape[-3:]} in source order but its source has "
            f"{source_shape}."
        )
    return data, source_affine


def _header_for(source_header, affine_lps: np.ndarray, data: np.ndarray, meta: dict):
    """A header for ``data``: the source header when its geometry is this affine, else new."""
    affine_ras = RAS_TO_LPS @ affine_lps  # the conversion is its own inverse
    if source_header is not None and np.array_equal(
            RAS_TO_LPS @ source_header.get_best_affine(), affine_lps):
        header = source_header.copy()
    else:
        header = nib.Nifti1Header()
        # sform carries the exact affine (shears included); qform can only hold a rotation.
        header.set_sform(affine_ras, code="scanner" if meta.get("format") == "dicom"
                         else "aligned")
        if _is_rigid(affine_ras):
            header.set_qform(affine_ras, code=int(header["sform_code"]))
        else:
            header.set_qform(affine_ras, code=0)
        header.set_xyzt_units("mm", "sec" if meta.get("frame_axis") == "time" else "unknown")
    if header.get_data_shape() != data.shape:
        header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    # The array is written as it is: no rescaling that could change a bit.
    header.set_slope_inter(np.nan, np.nan)
    return header


def _is_rigid(affine: np.ndarray) -> bool:
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.allclose(direction.T @ direction, np.eye(3), atol=1e-6))


def _smallest_integer_array(data: np.ndarray) -> np.ndarray:
    """``data`` in the smallest integer dtype that holds its values exactly."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.size == 0:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise WriteError("A label map must hold whole numbers; this one has fractional "
                             "or non-finite values.")
    low, high = data.min(), data.max()
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return data.astype(dtype, copy=False)
    raise WriteError(f"Values from {low} to {high} do not fit in 32-bit integers.")


def _refuse_overwriting_source(path: Path, meta: dict) -> None:
    target = path.resolve()
    sources = [meta.get("source")] + list(meta.get("source_files", ()))
    for source in sources:
        if source is not None and Path(source).resolve() == target:
            raise WriteError(f"Refusing to overwrite the source scan {target}; choose "
                             f"another file name.")


def _atomic_save(image, path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise WriteError(f"The folder {folder} does not exist.")
    try:
        with atomic_path(path) as temporary:
            nib.save(image, temporary)
    except OSError as error:
        raise WriteError(f"Could not write {path}: {error.strerror or error}.") from None


def _guess_modality(header) -> str:
    intent_code = int(header["intent_code"])
    intent_name = bytes(header["intent_name"]).split(b"\0")[0].decode("latin-1").lower()
    if intent_code == INTENT_LABEL or intent_name in ("label", "labels", "segmentation"):
        return "SEG"
    description = bytes(header["descrip"]).split(b"\0")[0].decode("latin-1")
    for word in re.findall(r"[A-Za-z]+", description):
        if word.upper() in _DESCRIPTION_MODALITY:
            return _DESCRIPTION_MODALITY[word.upper()]
    return "OT"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _reason(error: BaseException) -> str:
    if isinstance(error, (EOFError, zlib.error, gzip.BadGzipFile)):
        return "the file ends early or its compression is damaged"
    text = str(error).strip().rstrip(".")
    return text.splitlines()[0] if text else type(error).__name__
