"""Reading and writing volumes with exact patient geometry (see ``volume`` for conventions).

Public API: :func:`read` (every volume a path holds), :func:`read_volume` (exactly one),
:func:`write_nifti`, :func:`volume_like` (an array on a reference's grid, for writing
labels), :func:`require_3d`, and the :class:`Volume` contract.
"""

from napari_medattn.io.nifti import read_nifti, source_order, volume_like, write_nifti
from napari_medattn.io.reader import nonfinite_warning, read, read_volume
from napari_medattn.io.volume import Volume, require_3d

__all__ = [
    "Volume",
    "nonfinite_warning",
    "read",
    "read_nifti",
    "read_volume",
    "require_3d",
    "source_order",
    "volume_like",
    "write_nifti",
]
