"""Make the shipped sample scans in src/napari_medattn/sample_data/ from installed packages.

Nothing is downloaded: every image comes from a file that nilearn, nibabel, dipy or pydicom
install with themselves (nilearn's ``load_mni152_*`` read bundled files; ``fetch_*`` is
never called). Run from the repository root::

    .venv/bin/python scripts/make_sample_data.py

See src/napari_medattn/sample_data/README.md for each file's source and licence.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.affines import from_matvec
from nibabel.eulerangles import euler2mat
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_medattn" / "sample_data"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Fixed UID root + seed-free derivation keeps re-runs byte-identical (reproducible files).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
# MR intensities on the scale of a typical 12-bit T1 scan instead of nilearn's 0..1.
MR_SCALE = 1000.0


def mni152(out: Path) -> None:
    """MNI152 2009a T1 at 1 mm and a 4-class tissue label map from its GM/WM/brain masks."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0
    t1_data = np.round(t1.get_fdata() * MR_SCALE).astype(np.int16)
    _save(t1_data, t1.affine, out / "mni152_t1.nii.gz", "MR MNI152 2009a T1")
    # CSF is what the brain mask holds beyond grey and white matter: its probability is the
    # remainder 1 - p(GM) - p(WM); each brain voxel takes its most probable class.
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    labels[~brain] = 0
    _save(labels, t1.affine, out / "mni152_tissue_labels.nii.gz",
          "SEG 0 background 1 CSF 2 GM 3 WM", intent_label=True)
    mr_dicom_series(t1_data, t1.affine, out / "mr_series")


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


def mr_dicom_series(t1: np.ndarray, affine_ras: np.ndarray, folder: Path) -> None:
    """An axial MR DICOM series of the MNI152 T1: 2 mm pixels, 4 mm slices, LPS geometry.

    The 1 mm volume is brought to LPS (x left, y posterior, z superior) by flipping its
    RAS i and j axes, then every 4th slice and every 2nd row/column is kept (nearest
    sampling, so voxel values are the template's own). Slices carry exact
    ImagePositionPatient / ImageOrientationPatient, so a reader can rebuild the geometry.
    """
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    affine = RAS_TO_LPS @ affine_ras
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise RuntimeError("The MNI152 template is expected to be axis-aligned.")
    # Make every array axis increase along +x, +y, +z of LPS.
    volume, origin_index = t1, np.zeros(3)
    for axis in range(3):
        if affine[axis, axis] < 0:
            volume = np.flip(volume, axis)
            origin_index[axis] = t1.shape[axis] - 1
    origin = (affine @ np.append(origin_index, 1.0))[:3]
    step = np.abs(np.diag(affine)[:3])
    pixel_stride, slice_stride = 2, 4
    volume = volume[::pixel_stride, ::pixel_stride, ::slice_stride]  # (x, y, z)
    study, series = _uid("study"), _uid("series-mr-t1")
    frame = _uid("frame-of-reference")
    now = datetime.date(2024, 1, 1).strftime("%Y%m%d")
    for k in range(volume.shape[2]):
        position = origin + np.array([0.0, 0.0, k * slice_stride * step[2]])
        ds = _mr_slice(volume[:, :, k].T, position, pixel_stride * step[:2],
                       slice_stride * step[2], k + 1, study, series, frame, now)
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)


def _uid(name: str) -> str:
    digits = int.from_bytes(name.encode(), "big") % 10**30
    return f"{UID_PREFIX}{digits}"


def _mr_slice(pixels: np.ndarray, position: np.ndarray, pixel_spacing: np.ndarray,
              slice_spacing: float, number: int, study: str, series: str, frame: str,
              date: str) -> Dataset:
    # pixels[row, column]: rows run along +y (posterior), columns along +x (left).
    sop = _uid(f"{series}-{number}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame
    ds.Modality = "MR"
    ds.PatientName = "MNI152^Template"
    ds.PatientID = "MNI152"
    ds.StudyDate = ds.SeriesDate = date
    ds.StudyDescription = "napari-medattn sample"
    ds.SeriesDescription = "T1 MNI152 axial"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{pixel_spacing[1]:g}", f"{pixel_spacing[0]:g}"]  # row, column
    ds.SliceThickness = f"{slice_spacing:g}"
    ds.SpacingBetweenSlices = f"{slice_spacing:g}"
    ds.SliceLocation = f"{position[2]:.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


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
