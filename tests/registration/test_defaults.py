"""Settings by modality pair: the table, the contrast read off a scan, and that the
table's choice matters: on a cross-contrast pair its metric recovers the known motion
where the same-contrast metric does not."""

from pathlib import Path

import numpy as np
import pytest

from napari_medattn.errors import GeometryError
from napari_medattn.io import Volume, read_volume
from napari_medattn.registration import Settings, contrast_of, defaults_for, register
from napari_medattn.registration.defaults import deformable_iterations_for, pair_kind
from napari_medattn.registration.transforms import grid_points

SAMPLES = Path(__file__).parents[2] / "src" / "napari_medattn" / "sample_data"


def t2_like(volume: Volume) -> Volume:
    """Brain intensities inverted (bright CSF, dark white matter), background kept 0:
    the T2-like rendering of docs/benchmarks/registration.md."""
    data = np.asarray(volume.data, np.float32)
    inside = data > 0.1 * data.max()
    out = np.where(inside, 1.2 * data.max() - data, 0.0).astype(np.float32)
    return Volume(out, volume.affine, "MR", {**volume.meta, "name": "t2-like"})


@pytest.mark.parametrize("fixed,moving,kind", [
    ("CT", "CT", "same"), ("MR", "MR", "same"), ("T1", "T1", "same"), ("PT", "PT", "same"),
    ("T1", "T2", "cross"), ("MR", "CT", "cross"), ("FLAIR", "CT", "cross"),
    ("MR", "T2", "cross"), ("PT", "CT", "pet"), ("T1", "PT", "pet"),
    ("OT", "MR", "unknown"), ("CT", "US", "unknown")])
def test_pair_kind_is_symmetric_and_reads_the_table(fixed, moving, kind):
    assert pair_kind(fixed, moving) == kind
    assert pair_kind(moving, fixed) == kind


def test_metrics_levels_and_smoothness_by_pair():
    same_linear, same_deformable = defaults_for("MR", "MR"), defaults_for("MR", "MR",
                                                                          "deformable")
    assert (same_linear.metric, same_deformable.metric) == ("mse", "ncc")
    for pair in (("T1", "T2"), ("MR", "CT"), ("PT", "CT"), ("OT", "OT")):
        assert {defaults_for(*pair, method).metric
                for method in ("rigid", "affine", "deformable")} == {"mi"}
    pet = defaults_for("CT", "PT", "deformable")
    assert pet.levels == (4, 2) and pet.smoothing_mm > same_deformable.smoothing_mm
    assert len(pet.deformable_iterations) == len(pet.levels)
    assert same_deformable.method == "deformable" and same_linear.method == "rigid"
    # Each row is a valid engine configuration.
    for pair in (("MR", "MR"), ("T1", "T2"), ("PT", "CT"), ("OT", "MR")):
        defaults_for(*pair, "deformable").check()
    with pytest.raises(GeometryError, match="method"):
        defaults_for("MR", "MR", "learned")


def test_deformable_iterations_are_the_engines_measured_default():
    assert deformable_iterations_for((4, 2, 1)) == Settings().deformable_iterations
    assert deformable_iterations_for((2,)) == (20,)


def test_contrast_of_sample_scans():
    assert contrast_of(read_volume(SAMPLES / "mni152_t1.nii.gz")) == "T1"
    assert contrast_of(read_volume(SAMPLES / "synthetic_ct_head.nii.gz")) == "CT"
    assert contrast_of(read_volume(SAMPLES / "synthetic_fdg_pet.nii.gz")) == "PT"
    anatomical = read_volume(SAMPLES / "nibabel_anatomical.nii.gz")
    assert contrast_of(anatomical) == "MR"  # no weighting named
    assert contrast_of(t2_like(anatomical)) == "T2"
    data = np.zeros((4, 4, 4), np.float32)
    assert contrast_of(Volume(data, np.eye(4), "OT", {"name": "sub-01_FLAIR"})) == "FLAIR"
    assert contrast_of(Volume(data, np.eye(4), "MR",
                              {"name": "x", "series_description": "T1 vs T2"})) == "MR"
    assert contrast_of(Volume(data, np.eye(4), "CT", {"name": "t1 ct"})) == "CT"


def test_the_cross_contrast_default_recovers_motion_the_same_contrast_metric_misses(
        nibabel_pair):
    fixed, moved, truth = nibabel_pair
    moving = t2_like(moved)
    points = grid_points(fixed.affine, fixed.spatial_shape).reshape(-1, 3)

    def tre(settings):
        found = register(fixed, moving, settings).transform
        return np.linalg.norm(found(points) - truth(points), axis=1).mean()

    chosen = defaults_for(contrast_of(fixed), contrast_of(moving))
    assert chosen.metric == "mi"
    assert tre(chosen) < 0.5
    assert tre(defaults_for("MR", "MR")) > 1.0  # mse: what a same-contrast pair gets
