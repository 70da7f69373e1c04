"""Per-class statistics in patient mm: hand-computed values on a small oblique, anisotropic
grid, and SimpleITK's label statistics as the reference on a random one."""

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medattn.errors import DimensionError, GeometryError
from napari_medattn.io import Volume
from napari_medattn.io.volume import affine_from_itk
from napari_medattn.metrics.statistics import FIELDS, class_statistics, write_statistics_csv

COS, SIN = math.cos(math.radians(30)), math.sin(math.radians(30))
#: Array axis 0 steps 2 mm along (cos 30, sin 30, 0), axis 1 steps 1 mm along
#: (-sin 30, cos 30, 0), axis 2 steps 3 mm along +z (superior); origin (10, -20, 5) mm.
AFFINE = np.array([[2 * COS, -SIN, 0.0, 10.0],
                   [2 * SIN, COS, 0.0, -20.0],
                   [0.0, 0.0, 3.0, 5.0],
                   [0.0, 0.0, 0.0, 1.0]])


def small_case():
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[0, 0, 0] = labels[1, 0, 0] = 1          # two voxels along axis 0
    labels[2:4, 1:4, 5] = 3                       # a 2 x 3 x 1 block
    image = np.arange(labels.size, dtype=np.int16).reshape(labels.shape) - 50
    meta = {"name": "seg", "classes": [("background", "#000000"), ("liver", "#ff0000"),
                                       ("spleen", "#00ff00"), ("kidney", "#0000ff")]}
    return (Volume(labels, AFFINE, "SEG", meta),
            Volume(image, AFFINE, "CT", {"name": "ct"}))


def test_hand_computed_rows_on_an_oblique_anisotropic_grid():
    labels, image = small_case()
    rows = class_statistics(labels, image)
    assert [r["label"] for r in rows] == [1, 2, 3]
    assert [r["name"] for r in rows] == ["liver", "spleen", "kidney"]
    assert all(list(r) == list(FIELDS) for r in rows)
    liver, spleen, kidney = rows

    # |det| = 2 * 1 * 3 = 6 mm^3 per voxel, whatever the rotation.
    assert liver["voxels"] == 2 and liver["volume_mm3"] == pytest.approx(12.0)
    assert liver["volume_ml"] == pytest.approx(0.012)
    # Intensities: voxel (a0, a1, a2) holds 30 a0 + 6 a1 + a2 - 50 -> -50 and -20.
    assert (liver["mean"], liver["min"], liver["max"]) == (-35.0, -50.0, -20.0)
    assert liver["sd"] == pytest.approx(math.sqrt(2 * 15.0**2 / 1))
    assert liver["unit"] == "HU"
    # Voxels (0,0,0) -> origin, (1,0,0) -> origin + (2 cos 30, 2 sin 30, 0).
    assert liver["centroid_x_mm"] == pytest.approx(10 + COS)
    assert liver["centroid_y_mm"] == pytest.approx(-20 + SIN)
    assert liver["centroid_z_mm"] == pytest.approx(5.0)
    assert (liver["bbox_min_x_mm"], liver["bbox_max_x_mm"]) == pytest.approx((10, 10 + 2 * COS))
    assert (liver["bbox_min_y_mm"], liver["bbox_max_y_mm"]) == pytest.approx((-20, -20 + 1.0))

    # A named class that is absent: a row of zeros and NaN.
    assert spleen["voxels"] == 0 and spleen["volume_ml"] == 0.0
    assert math.isnan(spleen["mean"]) and math.isnan(spleen["centroid_x_mm"])

    assert kidney["voxels"] == 6 and kidney["volume_mm3"] == pytest.approx(36.0)
    # Values 30 a0 + 6 a1 + 5 - 50 for a0 in {2, 3}, a1 in {1, 2, 3}: mean at a0 2.5, a1 2.
    assert kidney["mean"] == pytest.approx(30 * 2.5 + 6 * 2 - 45)
    assert (kidney["min"], kidney["max"]) == (60 + 6 - 45, 90 + 18 - 45)
    expected_sd = np.std([30 * a + 6 * b - 45 for a in (2, 3) for b in (1, 2, 3)], ddof=1)
    assert kidney["sd"] == pytest.approx(expected_sd)
    # Centroid index (2.5, 2, 5): x = 10 + 5 cos30 - 2 sin30, y = -20 + 5 sin30 + 2 cos30.
    assert kidney["centroid_x_mm"] == pytest.approx(10 + 5 * COS - 2 * SIN)
    assert kidney["centroid_y_mm"] == pytest.approx(-20 + 5 * SIN + 2 * COS)
    assert kidney["centroid_z_mm"] == pytest.approx(5 + 15.0)
    # x is smallest at the corner (2, 3, 5) and largest at (3, 1, 5); y smallest at (2, 1),
    # largest at (3, 3).
    assert kidney["bbox_min_x_mm"] == pytest.approx(10 + 4 * COS - 3 * SIN)
    assert kidney["bbox_max_x_mm"] == pytest.approx(10 + 6 * COS - 1 * SIN)
    assert kidney["bbox_min_y_mm"] == pytest.approx(-20 + 4 * SIN + 1 * COS)
    assert kidney["bbox_max_y_mm"] == pytest.approx(-20 + 6 * SIN + 3 * COS)
    assert kidney["bbox_min_z_mm"] == kidney["bbox_max_z_mm"] == pytest.approx(20.0)


def test_background_and_missing_image():
    labels, _image = small_case()
    rows = class_statistics(labels, include_background=True, class_names={1: "a"})
    assert [(r["label"], r["name"]) for r in rows] == [(0, "class 0"), (1, "a"), (3, "class 3")]
    assert rows[0]["voxels"] == 4 * 5 * 6 - 8
    assert math.isnan(rows[1]["mean"]) and rows[1]["unit"] == ""
    assert rows[1]["voxels"] == 2


def test_equals_simpleitk_label_statistics():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (9, 11, 13)).astype(np.uint16)
    values = rng.normal(40, 300, labels.shape).astype(np.float32)
    direction = np.array([[COS, 0, -SIN], [0, 1, 0], [SIN, 0, COS]])
    origin, spacing = (-3.0, 7.0, 11.0), (0.7, 1.3, 2.5)
    affine = affine_from_itk(origin, spacing, direction.ravel())
    rows = class_statistics(Volume(labels, affine, "SEG", {"name": "l"}),
                            Volume(values, affine, "MR", {"name": "v"}))

    itk_labels, itk_values = sitk.GetImageFromArray(labels), sitk.GetImageFromArray(values)
    for image in (itk_labels, itk_values):
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction.ravel())
    stats, shape = sitk.LabelStatisticsImageFilter(), sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(itk_values, itk_labels)
    shape.Execute(itk_labels)
    assert [r["label"] for r in rows] == [1, 2, 3]
    for row in rows:
        label = row["label"]
        assert row["voxels"] == stats.GetCount(label)
        assert row["volume_mm3"] == pytest.approx(shape.GetPhysicalSize(label))
        assert row["mean"] == pytest.approx(stats.GetMean(label), rel=1e-6)
        assert row["sd"] == pytest.approx(stats.GetSigma(label), rel=1e-6)
        assert (row["min"], row["max"]) == pytest.approx((stats.GetMinimum(label),
                                                           stats.GetMaximum(label)))
        centroid = [row[f"centroid_{c}_mm"] for c in "xyz"]
        assert centroid == pytest.approx(shape.GetCentroid(label), abs=1e-9)


def test_csv_round_trip(tmp_path):
    labels, image = small_case()
    rows = class_statistics(labels, image)
    path = write_statistics_csv(rows, tmp_path / "stats.csv")
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(FIELDS)
    assert [r["name"] for r in read] == ["liver", "spleen", "kidney"]
    for row, back in zip(rows, read):
        for key in ("voxels", "volume_mm3", "mean", "centroid_x_mm", "bbox_max_y_mm"):
            assert float(back[key]) == pytest.approx(row[key], nan_ok=True)
    assert not list(tmp_path.glob(".*partial"))


def test_bad_input_is_refused():
    labels, image = small_case()
    same_grid = Volume(image.data, AFFINE.copy() + 1e-6, "CT", {"name": "ct"})
    moved = AFFINE.copy()
    moved[0, 3] += 1.0
    with pytest.raises(GeometryError, match="1 mm apart"):
        class_statistics(labels, Volume(image.data, moved, "CT", {"name": "ct"}))
    with pytest.raises(GeometryError, match="shape"):
        class_statistics(labels, Volume(image.data[:3], AFFINE, "CT", {"name": "ct"}))
    with pytest.raises(DimensionError, match="integer"):
        class_statistics(Volume(labels.data.astype(float), AFFINE, "SEG", {"name": "f"}))
    with pytest.raises(DimensionError, match="negative"):
        class_statistics(Volume(labels.data.astype(np.int8) - 1, AFFINE, "SEG", {"name": "n"}))
    # A grid within the tolerance (1e-6 mm) is the same grid.
    assert class_statistics(labels, same_grid)[0] == class_statistics(labels, image)[0]


def test_axis_aligned_bounding_box_equals_every_voxel():
    """Axis-aligned grids take the bounding box from the index box corners: check it
    against all voxel centres on a permuted, flipped, anisotropic grid."""
    rng = np.random.default_rng(7)
    labels = np.zeros((12, 10, 14), np.uint8)
    labels[2:9, 1:7, 3:12] = rng.integers(0, 3, (7, 6, 9))
    affine = np.array([[0.0, 0.0, -0.8, 50.0],   # axis 2 -> towards the right (-x)
                       [0.0, 1.5, 0.0, -30.0],   # axis 1 -> posterior
                       [-3.0, 0.0, 0.0, 12.0],   # axis 0 -> inferior
                       [0.0, 0.0, 0.0, 1.0]])
    rows = class_statistics(Volume(labels, affine, "SEG", {"name": "a"}))
    for row in rows:
        points = (affine[:3, :3] @ np.argwhere(labels == row["label"]).T).T + affine[:3, 3]
        assert [row[f"bbox_min_{c}_mm"] for c in "xyz"] == pytest.approx(points.min(axis=0))
        assert [row[f"bbox_max_{c}_mm"] for c in "xyz"] == pytest.approx(points.max(axis=0))
        assert [row[f"centroid_{c}_mm"] for c in "xyz"] == pytest.approx(points.mean(axis=0))
