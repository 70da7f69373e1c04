"""npe2 contributions: the reader, the NIfTI, DICOM-SEG and Parametric Map writers and the
sample data.

Library errors (:class:`~napari_medattn.errors.MedAttnError`) become one notification
sentence here; nothing the user opened or saved produces a traceback dialog.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import napari
from napari.utils.notifications import show_error, show_warning

from napari_medattn.display.layers import (
    layer_volume,
    oblique_message,
    volume_layer_data,
)
from napari_medattn.errors import MedAttnError
from napari_medattn.io import read, write_nifti
from napari_medattn.io.dicom.files import has_dicom_preamble
from napari_medattn.io.dicom.pmap import write_parametric_map
from napari_medattn.io.dicom.seg import is_seg, read_seg_onto, write_seg
from napari_medattn.io.nifti import is_nifti
from napari_medattn.widgets.dicom_browser import (
    layer_algorithm,
    layer_classes,
    layer_map_kind,
    open_scans,
)
from napari_medattn.widgets.radiology_view import install_radiology_view

SAMPLE_DIR = Path(__file__).parent / "sample_data"
# napari's "nothing to add" answer: the reader handled the path but made no layer.
_NO_LAYERS = [(None,)]


def get_reader(path: str | list[str]) -> Callable[[Any], list] | None:
    """Return :func:`read_layers` for NIfTI files, DICOM files, DICOMDIRs and folders."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if paths and all(_readable(Path(p)) for p in paths):
        return read_layers
    return None


def _readable(path: Path) -> bool:
    if path.is_dir() or is_nifti(path) or path.name.upper() == "DICOMDIR":
        return True
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    # Extension-less DICOM files are common: check the 'DICM' preamble marker.
    return has_dicom_preamble(path)


def read_layers(path: str | list[str]) -> list:
    """Read each path into image/labels layer data (one layer per volume or DICOM series).

    Warnings attached by the reader (non-finite voxels, skipped objects) and the oblique
    notice become napari warnings; a :class:`MedAttnError` becomes one error notification.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    viewer = napari.current_viewer()
    if viewer is not None:
        install_radiology_view(viewer)
    layers = []
    for one in paths:
        try:
            if viewer is not None and is_seg(one):
                # A SEG lands on the open scan it references, else by its own frames.
                volumes = [read_seg_onto(one, open_scans(viewer))]
            else:
                volumes = read(one)
            for volume in volumes:
                for note in volume.meta.get("warnings", []):
                    show_warning(f"{volume.name}: {note}")
                notice = oblique_message(volume)
                if notice:
                    show_warning(notice)
                layers.append(volume_layer_data(volume))
        except MedAttnError as error:
            show_error(str(error))
    return layers or _NO_LAYERS


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write an image layer to NIfTI in its source geometry."""
    return _write(path, data, meta, modality=None)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer to NIfTI on the geometry of the scan it was drawn on."""
    return _write(path, data, meta, modality="SEG")


def write_labels_dicom_seg(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer drawn on a DICOM scan as a DICOM-SEG referencing that scan."""
    metadata = meta.get("metadata", {})
    try:
        volume = layer_volume(data, metadata, modality="SEG", name=meta.get("name"))
        return [str(write_seg(path, volume, classes=layer_classes(meta),
                              algorithm=layer_algorithm(metadata)))]
    except MedAttnError as error:
        warnings.warn(str(error), stacklevel=2)
        return []


def write_image_parametric_map(path: str, data: Any, meta: dict) -> list[str]:
    """Write a map layer (probability, uncertainty, attention, explanation) computed on a
    DICOM scan as a DICOM Parametric Map referencing that scan."""
    metadata = meta.get("metadata", {})
    try:
        kind = layer_map_kind(metadata, meta.get("name") or "This layer")
        volume = layer_volume(data, metadata, modality="OT", name=meta.get("name"))
        return [str(write_parametric_map(path, volume, kind))]
    except MedAttnError as error:
        warnings.warn(str(error), stacklevel=2)
        return []


def _write(path: str, data: Any, meta: dict, modality: str | None) -> list[str]:
    try:
        volume = layer_volume(data, meta.get("metadata", {}), modality=modality,
                              name=meta.get("name"))
        return [str(write_nifti(path, volume))]
    except MedAttnError as error:
        # napari turns a writer that wrote nothing into one "save failed" message that
        # includes the warnings raised here, so the sentence reaches the user once.
        warnings.warn(str(error), stacklevel=2)
        return []


def _sample(filename: str) -> Callable[[], list]:
    def load() -> list:
        return read_layers(str(SAMPLE_DIR / filename))

    load.__doc__ = f"Load the {filename} sample."
    return load


# Sample data (see sample_data/README.md for sources and licences).
sample_mni152_t1 = _sample("mni152_t1.nii.gz")
sample_mni152_tissue = _sample("mni152_tissue_labels.nii.gz")
sample_nibabel_anatomical = _sample("nibabel_anatomical.nii.gz")
sample_nibabel_anatomical_moved = _sample("nibabel_anatomical_moved.nii.gz")
sample_dipy_aniso_vox = _sample("dipy_aniso_vox.nii.gz")
sample_ct_small = _sample("CT_small.dcm")
sample_mr_series = _sample("mr_series")
sample_synthetic_ct_head = _sample("synthetic_ct_head.nii.gz")
sample_synthetic_fdg_pet = _sample("synthetic_fdg_pet.nii.gz")


def sample_synthetic_pet_ct() -> list:
    """The synthetic CT head and FDG-like PET together, for the Fuse widget."""
    return sample_synthetic_ct_head() + sample_synthetic_fdg_pet()
