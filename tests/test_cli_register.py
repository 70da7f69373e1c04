import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medattn.cli import main
from napari_medattn.io import read_volume
from napari_medattn.registration import read_transform
from napari_medattn.registration.transforms import grid_points

SAMPLES = Path(__file__).parents[1] / "src" / "napari_medattn" / "sample_data"
FIXED = SAMPLES / "nibabel_anatomical.nii.gz"
MOVED = SAMPLES / "nibabel_anatomical_moved.nii.gz"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_points(path, points):
    path.write_text("x,y,z\n" + "".join(f"{x},{y},{z}\n" for x, y, z in points))


def write_labels(tmp_path):
    """A brain/background label map of each scan (same voxels, each file's affine)."""
    paths = []
    for source in (MOVED, FIXED):
        image = nib.load(source)
        labels = (np.asarray(image.dataobj) > 150).astype(np.uint8)
        path = tmp_path / f"labels_{source.name}"
        nib.save(nib.Nifti1Image(labels, image.affine), path)
        paths.append(str(path))
    return paths


def test_register_landmarks_then_warp_applies_the_saved_transform(tmp_path, nibabel_truth):
    rng = np.random.default_rng(0)
    fixed_points = rng.uniform(-30, 30, (6, 3))
    write_points(tmp_path / "f.csv", fixed_points)
    write_points(tmp_path / "m.csv", nibabel_truth(fixed_points))
    out = tmp_path / "out"
    assert main(["register", str(FIXED), str(MOVED), "--out", str(out), "--method",
                 "landmarks", "--landmarks", str(tmp_path / "f.csv"),
                 str(tmp_path / "m.csv"), "--labels", *write_labels(tmp_path)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"warped.nii.gz", "transform.tfm", "detj.nii.gz", "qa.json",
                     "labels_warped.nii.gz", "provenance.json"}
    qa = json.loads((out / "qa.json").read_text())
    assert qa["tre_mean_mm"] < 1e-6 and qa["folding_percent"] == 0.0
    assert qa["dice"]["class 1"] > 0.95 > qa["dice_before"]["class 1"]
    saved = read_transform(out / "transform.tfm")
    assert np.allclose(saved.matrix, nibabel_truth.matrix, atol=1e-6)
    record = json.loads((out / "provenance.json").read_text())
    assert record["command"] == "register" and len(record["inputs"]) == 2
    # warp with the saved file gives the same voxels as register's own output
    target = tmp_path / "again.nii.gz"
    assert main(["warp", str(MOVED), "--transform", str(out / "transform.tfm"), "--like",
                 str(FIXED), "--out", str(target)]) == 0
    assert np.allclose(read_volume(target).data, read_volume(out / "warped.nii.gz").data)


def test_register_rigid_recovers_the_motion(tmp_path, nibabel_truth):
    out = tmp_path / "rigid"
    assert main(["register", str(FIXED), str(MOVED), "--out", str(out), "--metric",
                 "mse", "--device", "cpu"]) == 0
    fixed = read_volume(FIXED)
    points = grid_points(fixed.affine, fixed.spatial_shape).reshape(-1, 3)
    found = read_transform(out / "transform.tfm")
    assert np.linalg.norm(found(points) - nibabel_truth(points), axis=1).mean() < 0.5


def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["register", str(FIXED), str(MOVED), "--out", str(out), "--method",
                 "landmarks"]) == 1
    assert "needs --landmarks" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(["warp", str(MOVED), "--transform", str(FIXED), "--like", str(FIXED),
                 "--out", str(tmp_path / "x.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "not a displacement field" in err and err.count("\n") == 1
    assert not (tmp_path / "x.nii.gz").exists()
