"""Registration: align a moving scan to a fixed scan in patient space.

The convention, stated once for the whole package: **a transform maps FIXED patient mm
(LPS) to MOVING patient mm.** To show the moving scan on the fixed grid, every fixed voxel
reads the moving scan at ``transform(its LPS position)``. This is ITK's direction (its
resampler and transform files use it), so our files need no inversion for SimpleITK, ANTs
or 3D Slicer. Because a transform acts on patient millimetres, results do not depend on
either file's voxel order, orientation or spacing: those are read from the affines.

Modules: :mod:`.transforms` (linear, displacement and velocity fields, composition,
inverse), :mod:`.landmarks` (least-squares fits from paired points, TRE), :mod:`.engine`
(the classical multi-resolution optimiser in torch), :mod:`.apply` (warping volumes and
label maps through the one resampler), :mod:`.itk_files` (ITK transform files and
displacement-field NIfTI), :mod:`.defaults` (settings by modality pair), :mod:`.learned`
(registration networks: a velocity field in one pass, optionally refined). Quality measures
are in :mod:`napari_medattn.metrics.registration`.
"""

from napari_medattn.registration.apply import grid_lines, warp
from napari_medattn.registration.defaults import contrast_of, defaults_for
from napari_medattn.registration.engine import METHODS, Result, Settings, Snapshot, register
from napari_medattn.registration.itk_files import read_transform, write_transform
from napari_medattn.registration.landmarks import fit_landmarks, landmark_errors
from napari_medattn.registration.learned import register_learned
from napari_medattn.registration.transforms import (
    CompositeTransform,
    DisplacementField,
    LinearTransform,
    bake,
    compose,
    exponentiate,
)

__all__ = [
    "METHODS",
    "CompositeTransform",
    "DisplacementField",
    "LinearTransform",
    "Result",
    "Settings",
    "Snapshot",
    "bake",
    "compose",
    "contrast_of",
    "defaults_for",
    "exponentiate",
    "fit_landmarks",
    "grid_lines",
    "landmark_errors",
    "read_transform",
    "register",
    "register_learned",
    "warp",
    "write_transform",
]
