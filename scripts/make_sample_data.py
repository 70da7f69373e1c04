"""Make the shipped sample scans in src/napari_medattn/sample_data/ from installed packages.

Nothing is downloaded: every image comes from a file that nilearn, nibabel, dipy or pydicom
install with themselves (nilearn's ``load_mni152_*`` read bundled files; ``fetch_*`` is
never called). Run from the repository root::

    .venv/bin/python scripts/make_sample_data.py

See src/napari_medattn/sample_data/README.md for each file's source and licence.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import from_matvec
from nibabel.eulerangles import euler2mat

from napari_medattn.io import Volume, read_volume
from napari_medattn.io.dicom.write import write_dicom_series
from napari_medattn.io.volume import RAS_TO_LPS
from napari_medattn.training.synthesis import mni152_tissue_labels

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_medattn" / "sample_data"


def mni152(out: Path) -> None:
    """MNI152 2009a T1 at 1 mm and its 4-class tissue label map (see
    :func:`napari_medattn.training.synthesis.mni152_tissue_labels` for the derivation)."""
    t1, labels = mni152_tissue_labels(resolution=1)
    # nibabel writes RAS; the LPS <-> RAS flip is its own inverse and exact in floats.
    affine_ras = RAS_TO_LPS @ t1.affine
    _save(np.round(t1.data).astype(np.int16), affine_ras, out / "mni152_t1.nii.gz",
          "MR MNI152 2009a T1")
    _save(labels.data, affine_ras, out / "mni152_tissue_labels.nii.gz",
          "SEG 0 background 1 CSF 2 GM 3 WM", intent_label=True)
    mr_dicom_series(out / "mni152_t1.nii.gz", out / "mr_series")


def _save(data: np.ndarray, affine: np.ndarray, path: Path, description: str,
          intent_label: bool = False) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = description.encode()
    image.set_qform(affine, code=4)  # 4 = MNI152 space
    image.set_sform(affine, code=4)
    if intent_label:
        image.header.set_intent(1002)  # NIFTI_INTENT_LABEL
    nib.save(image, path)


def nibabel_anatomical(out: Path) -> None:
    """nibabel's test T1 and the rigidly moved copy made by nibabel's make_moved_anat.py."""
    source = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    image = nib.load(source)
    data = np.asarray(image.dataobj).astype(np.int16)  # native byte order
    fixed = nib.Nifti1Image(data, image.affine, image.header)
    fixed.set_data_dtype(np.int16)
    # NIfTI has no modality tag; the description word is what readers can go by.
    fixed.header["descrip"] = b"MR nibabel test T1"
    nib.save(fixed, out / "nibabel_anatomical.nii.gz")
    # The exact recipe of nibabel/tests/data/make_moved_anat.py (rotation + translation of
    # the affine, same voxels), kept in int16 rather than float32 to stay small.
    extra = from_matvec(euler2mat(0.1, 0.2, 0.3), [3, 4, 5])
    moved = nib.Nifti1Image(data, extra @ image.affine, image.header)
    moved.set_data_dtype(np.int16)
    moved.header["descrip"] = b"MR nibabel test T1 rigidly moved"
    nib.save(moved, out / "nibabel_anatomical_moved.nii.gz")


def dipy_volume(out: Path) -> None:
    """dipy's bundled anisotropic-voxel brain MR (``get_fnames(name='aniso_vox')``).

    Voxels, affine and header are kept; only the description gains the word MR.
    """
    from dipy.data import get_fnames

    image = nib.load(get_fnames(name="aniso_vox"))
    copy = nib.Nifti1Image(image.dataobj, image.affine, image.header)
    copy.header["descrip"] = b"MR dipy aniso_vox"
    nib.save(copy, out / "dipy_aniso_vox.nii.gz")


def pydicom_ct(out: Path) -> None:
    """pydicom's CT_small.dcm test file, copied unchanged."""
    from pydicom.data import get_testdata_file

    shutil.copyfile(get_testdata_file("CT_small.dcm"), out / "CT_small.dcm")


def mr_dicom_series(t1_path: Path, folder: Path) -> None:
    """An axial MR DICOM series of the MNI152 T1: 2 mm pixels, 4 mm slices, LPS geometry.

    The 1 mm volume is read with the plugin's reader and taken in its canonical (z, y, x)
    LPS view; every 4th slice and every 2nd row/column is kept (nearest sampling, so voxel
    values are the template's own) and the affine steps are scaled to match. The plugin's
    series writer stores exact ImagePositionPatient / ImageOrientationPatient per slice.
    """
    if folder.exists():
        shutil.rmtree(folder)
    view = read_volume(t1_path).canonical()
    strides = (4, 2, 2)  # slices, rows, columns
    data = view.data[::strides[0], ::strides[1], ::strides[2]]
    affine = view.affine.copy()
    affine[:3, :3] = affine[:3, :3] * np.array(strides)
    series = Volume(np.ascontiguousarray(data), affine, "MR", {"name": "MNI152 T1 axial"})
    write_dicom_series(folder, series, series_description="T1 MNI152 axial",
                       patient={"PatientName": "MNI152^Template", "PatientID": "MNI152"})


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    mni152(OUT)
    nibabel_anatomical(OUT)
    dipy_volume(OUT)
    pydicom_ct(OUT)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
