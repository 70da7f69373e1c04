"""DICOM in and out, each concept a module.

Reading: :mod:`.read` (files, folders, DICOMDIR; one Volume per series), with :mod:`.files`
(which files are DICOM), :mod:`.geometry` (slices placed in the patient) and :mod:`.pixels`
(pixel data into one array). Writing: :mod:`.write` (a volume as an image series),
:mod:`.seg` (DICOM-SEG, also read back), :mod:`.sr` (TID 1500 measurement reports),
:mod:`.pmap` (Parametric Maps and derived series), all referencing their source images
through :mod:`.source`.

Public API (also exported by :mod:`napari_medattn.io`): :func:`read_dicom`,
:func:`write_dicom_series`.
"""

from napari_medattn.io.dicom.read import read_dicom
from napari_medattn.io.dicom.write import write_dicom_series

__all__ = ["read_dicom", "write_dicom_series"]
