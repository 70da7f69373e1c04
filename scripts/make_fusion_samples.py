"""Make the synthetic PET/CT head pair in src/napari_medattn/sample_data/ from real anatomy.

No PET/CT pair ships in any installed package, so both scans are built from the MNI152 2009a
tissue map that nilearn installs (``napari_medattn.training.synthesis.mni152_tissue_labels``,
1 mm; nothing is downloaded):

* ``synthetic_ct_head.nii.gz``: a CT-like head in HU on the template's 1 mm grid: CSF, grey
  and white matter at typical unenhanced head-CT values, and around the brain (by distance
  from the brain mask) a CSF layer, a skull shell (cortical tables and diploe) and scalp.
* ``synthetic_fdg_pet.nii.gz``: an FDG-like PET in SUV: uptake per tissue (grey matter high,
  white matter lower, CSF and bone low), one hot sphere, blurred to a 5 mm FWHM point-spread
  function, then resampled (the package's resampler) onto its own 3 mm grid shifted from the
  CT's by a fraction of a voxel, as a PET scanner's grid is.

Run from the repository root (about a minute on 2 cores)::

    .venv/bin/python scripts/make_fusion_samples.py

The values are listed in :data:`CT_HU` and :data:`PET_SUV` and in sample_data/README.md.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from napari_medattn.inference.resample import LINEAR, resample_to_grid
from napari_medattn.io import Volume
from napari_medattn.io.volume import RAS_TO_LPS
from napari_medattn.training.synthesis import mni152_tissue_labels

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_medattn" / "sample_data"

#: Head layers outside the brain mask, by distance from it (mm, upper bounds).
LAYERS_MM = {"csf": 2.0, "outer_csf_table": 3.5, "diploe": 6.5, "table": 8.0, "scalp": 13.0}
#: CT values (HU) per tissue: brain tissue as in unenhanced head CT, cortical bone tables and
#: the lower-density diploe between them, scalp soft tissue, air.
CT_HU = {"air": -1000, "csf": 8, "grey": 38, "white": 28, "table": 1400, "diploe": 600,
         "scalp": 40}
#: FDG-like uptake (SUV, g/ml) per tissue: grey matter about three times white matter as in
#: FDG brain PET, low CSF, bone and scalp, no activity in air; one hot sphere.
PET_SUV = {"air": 0.0, "csf": 0.5, "grey": 9.0, "white": 3.0, "table": 0.6, "diploe": 0.9,
           "scalp": 1.0, "lesion": 16.0}
LESION_CENTRE_LPS = (-28.0, -20.0, 30.0)  # mm: right frontal white matter
LESION_RADIUS_MM = 6.0
PSF_FWHM_MM = 5.0
PET_SPACING_MM = 3.0
PET_SHIFT_MM = (1.1, -1.7, 0.9)  # LPS shift of the PET grid against the CT grid


def tissue_maps() -> tuple[Volume, dict[str, np.ndarray]]:
    """Boolean masks per tissue on the 1 mm MNI152 grid (brain classes and head layers)."""
    _, labels = mni152_tissue_labels(resolution=1)
    classes = np.asarray(labels.data)
    brain = classes > 0
    spacing = labels.spacing
    distance = ndimage.distance_transform_edt(~brain, sampling=spacing)
    masks = {"csf": classes == 1, "grey": classes == 2, "white": classes == 3}
    masks["csf"] |= (distance > 0) & (distance <= LAYERS_MM["csf"])
    table = ((distance > LAYERS_MM["csf"]) & (distance <= LAYERS_MM["outer_csf_table"])) | (
        (distance > LAYERS_MM["diploe"]) & (distance <= LAYERS_MM["table"]))
    masks["table"] = table
    masks["diploe"] = (distance > LAYERS_MM["outer_csf_table"]) & (distance <= LAYERS_MM["diploe"])
    masks["scalp"] = (distance > LAYERS_MM["table"]) & (distance <= LAYERS_MM["scalp"])
    masks["air"] = distance > LAYERS_MM["scalp"]
    return labels, masks


def synthetic_ct(labels: Volume, masks: dict[str, np.ndarray]) -> Volume:
    """CT-like head in HU (int16) on the tissue map's grid."""
    hu = np.zeros(labels.spatial_shape, np.float32)
    for tissue, value in CT_HU.items():
        hu[masks[tissue]] = value
    # A CT's own resolution (about 1 mm FWHM) softens the tissue edges a little.
    hu = ndimage.gaussian_filter(hu, sigma=0.45 / labels.spacing)
    return Volume(np.round(hu).astype(np.int16), labels.affine, "CT",
                  {"name": "synthetic_ct_head", "units": "HU"})


def synthetic_pet(labels: Volume, masks: dict[str, np.ndarray]) -> Volume:
    """FDG-like PET in SUV, 5 mm FWHM, on its own 3 mm grid shifted from the CT's."""
    suv = np.zeros(labels.spatial_shape, np.float32)
    for tissue, value in PET_SUV.items():
        if tissue != "lesion":
            suv[masks[tissue]] = value
    index = np.stack(np.meshgrid(*[np.arange(n) for n in labels.spatial_shape], indexing="ij"), -1)
    points = index @ labels.affine[:3, :3].T + labels.affine[:3, 3]
    lesion = np.linalg.norm(points - np.asarray(LESION_CENTRE_LPS), axis=-1) <= LESION_RADIUS_MM
    suv[lesion] = PET_SUV["lesion"]
    sigma_mm = PSF_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    blurred = ndimage.gaussian_filter(suv, sigma=sigma_mm / labels.spacing)
    source = Volume(blurred, labels.affine, "PT", {"name": "pet_1mm"})
    ratio = PET_SPACING_MM / labels.spacing
    shape = tuple(int(n) for n in np.floor((np.asarray(labels.spatial_shape) - 1) / ratio) + 1)
    affine = labels.affine.copy()
    affine[:3, :3] = labels.affine[:3, :3] * ratio
    affine[:3, 3] = labels.affine[:3, 3] + np.asarray(PET_SHIFT_MM)
    pet = resample_to_grid(source, affine, shape, order=LINEAR, mode="constant", cval=0.0)
    return Volume(np.clip(pet.data, 0.0, None), affine, "PT",
                  {"name": "synthetic_fdg_pet", "units": "SUV"})


def save(volume: Volume, path: Path, description: str, slope: float = 1.0) -> None:
    """NIfTI in RAS (as nibabel writes), scanner-space codes; ``slope`` stores floats as
    int16 with ``scl_slope`` (SUV to 0.001)."""
    affine_ras = RAS_TO_LPS @ volume.affine
    data = volume.data if slope == 1.0 else np.round(volume.data / slope).astype(np.int16)
    image = nib.Nifti1Image(data, affine_ras)
    image.header["descrip"] = description.encode()
    image.set_qform(affine_ras, code=1)
    image.set_sform(affine_ras, code=1)
    if slope != 1.0:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, path)


def main() -> None:
    labels, masks = tissue_maps()
    ct = synthetic_ct(labels, masks)
    save(ct, OUT / "synthetic_ct_head.nii.gz", "CT synthetic head HU")
    pet = synthetic_pet(labels, masks)
    save(pet, OUT / "synthetic_fdg_pet.nii.gz", "PET synthetic FDG SUV", slope=0.001)
    for name in ("synthetic_ct_head.nii.gz", "synthetic_fdg_pet.nii.gz"):
        print(f"wrote {name} ({(OUT / name).stat().st_size / 1e6:.2f} MB)")
    print(f"PET grid {pet.spatial_shape} at {PET_SPACING_MM} mm, CT grid {ct.spatial_shape}")


if __name__ == "__main__":
    main()
