"""Units of voxel values, as the readers record them in ``Volume.meta["units"]``.

The readers set ``meta["units"]`` from the file (DICOM: ``HU`` for CT after rescale,
``SUVbw`` for PET once converted, the PET ``Units`` or RT dose units otherwise; NIfTI has
no field for them). :func:`intensity_unit` is the one rule for what to call a volume's
values, used by the status bar, the fusion read-out and the mm statistics alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def intensity_unit(modality: str, meta: Mapping[str, Any]) -> str:
    """Unit of a volume's voxel values: the file's own, else ``"HU"`` for CT, else ``""``.

    Parameters
    ----------
    modality : str
        DICOM modality code of the volume (``"CT"``, ``"MR"``, ``"PT"``, ...).
    meta : mapping
        The volume's metadata; its ``"units"`` entry wins when set.

    Returns
    -------
    str
        E.g. ``"HU"``, ``"SUVbw"``, ``"BQML"``, or ``""`` when the values have no unit
        (MR signal intensity).
    """
    unit = meta.get("units")
    if unit:
        return str(unit)
    return "HU" if modality.upper() == "CT" else ""
