"""Small cases for the cohort tests (and the results browser's GUI test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_scans(folder: Path, count: int = 8, corrupt: str | None = "case_3",
               tile: int = 1) -> list[Path]:
    """``count`` small MR scans cut from nibabel's anatomical.nii (33 x 41 x 25 at 2 mm),
    each a different part and intensity scaling of the head; ``corrupt`` is a truncated
    gzip file (a NIfTI that cannot be read). ``tile`` repeats each scan along every axis
    (``tile**3`` times the work per case)."""
    import nibabel as nib
    from nibabel.testing import data_path

    source = nib.load(str(Path(data_path) / "anatomical.nii"))
    data = np.asarray(source.dataobj, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"case_{index}.nii.gz"
        if f"case_{index}" == corrupt:
            path.write_bytes(b"\x1f\x8b\x08\x00 not a whole gzip stream")
        else:
            crop = data[index % 3:, :, index % 4:] * (1.0 + 0.1 * index)
            crop = np.tile(crop, (tile, tile, tile))
            affine = source.affine.copy()
            affine[:3, 3] += affine[:3, :3] @ np.array([index % 3, 0, index % 4])
            nib.save(nib.Nifti1Image(crop, affine), str(path))
        paths.append(path)
    return paths


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("case,image,reference\n" + "".join(f"{c},{i},{r}\n" for c, i, r in rows))
    return path
