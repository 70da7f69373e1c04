"""Reading and writing volumes with exact patient geometry (see ``volume`` for conventions).

Public API: :func:`read` (every volume a path holds: NIfTI, DICOM file/folder/DICOMDIR),
:func:`read_volume` (exactly one), :func:`write_nifti`, :func:`volume_like` (an array on a
reference's grid, e.g. labels drawn in napari, ready for :func:`write_nifti`),
:func:`write_dicom_series`, :func:`require_3d`, :func:`affine_from_itk`, and the
:class:`Volume` contract.
"""

from napari_medattn.io.dicom import read_dicom, write_dicom_series
from napari_medattn.io.nifti import read_nifti, source_order, volume_like, write_nifti
from napari_medattn.io.reader import nonfinite_warning, read, read_volume
from napari_medattn.io.volume import Volume, affine_from_itk, require_3d

__all__ = [
    "Volume",
    "affine_from_itk",
    "nonfinite_warning",
    "read",
    "read_dicom",
    "read_nifti",
    "read_volume",
    "require_3d",
    "source_order",
    "volume_like",
    "write_dicom_series",
    "write_nifti",
]
