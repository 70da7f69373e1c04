import threading

import numpy as np
import pytest
import torch
from torch import nn

from napari_medattn.errors import Cancelled, DimensionError
from napari_medattn.inference.pipeline import segment
from napari_medattn.inference.window_options import OutputRequest, WindowOptions
from napari_medattn.io import Volume, read_volume, write_dicom_series, write_nifti
from napari_medattn.models.card import ClassInfo, ModelCard


class ThresholdNet(nn.Module):
    """Pointwise: class 1 where the normalised input exceeds 0.5. Blending a pointwise
    net changes nothing, so the expected segmentation is known exactly."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 40 * (x - 0.5)], dim=1)


def card(**changes):
    values = dict(name="threshold", architecture="test", patch_size=(8, 8, 8), modality="CT",
                  classes=[ClassInfo("background", "#000000"), ClassInfo("dense", "#ff0000")],
                  normalization={"scheme": "ct_window", "window": [-1000, 1000]})
    values.update(changes)
    return ModelCard(**values)


def ct_volume(shape=(20, 24, 18), affine=None, seed=0):
    rng = np.random.default_rng(seed)
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    centre = (np.array(shape) - 1) / 2
    inside = np.linalg.norm((index - centre) / (np.array(shape) / 3.2), axis=-1) < 1
    data = np.full(shape, -1000, np.int16)
    data[inside] = rng.integers(-300, -100, size=inside.sum())      # soft tissue, below 0 HU
    dense = np.linalg.norm((index - centre - 1) / (np.array(shape) / 6), axis=-1) < 1
    data[dense] = rng.integers(200, 600, size=dense.sum())         # bone, above 0 HU
    if affine is None:
        affine = np.diag([2.0, 0.7, 0.8, 1.0])
        affine[:3, 3] = (-40, 30, 12)
    return Volume(data, affine, "CT", {"name": "ct"})


def oblique_affine():
    angle = np.deg2rad(12)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    affine = np.eye(4)
    # Array axes roughly I, A, R (flipped and permuted relative to RAS).
    affine[:3, :3] = rotation @ np.array([[0, 0, -0.9], [0, -1.1, 0], [-1.6, 0, 0]])
    affine[:3, 3] = (25, 40, 90)
    return affine


def test_native_grid_segmentation_is_exact():
    volume = ct_volume()
    result = segment(volume, ThresholdNet(), card(), device="cpu",
                     outputs=OutputRequest(keep_probabilities=(1,), uncertainty="entropy"))
    assert result.labels.data.dtype == np.uint8 and result.labels.modality == "SEG"
    np.testing.assert_array_equal(result.labels.data, (volume.data > 0).astype(np.uint8))
    np.testing.assert_array_equal(result.labels.affine, volume.affine)
    expected = 1 / (1 + np.exp(-40 * ((np.clip(volume.data, -1000, 1000) + 1000) / 2000 - 0.5)))
    np.testing.assert_allclose(result.probabilities[1].data, expected, atol=1e-5)
    assert result.uncertainty.spatial_shape == volume.spatial_shape
    assert result.labels.meta["classes"] == [("background", "#000000"), ("dense", "#ff0000")]
    assert result.provenance["model"] == "threshold" and result.provenance["windows"] > 0


def test_reoriented_and_resampled_result_is_on_the_source_grid():
    volume = ct_volume(shape=(24, 20, 16), affine=oblique_affine())
    result = segment(volume, ThresholdNet(), card(orientation="RAS", spacing=(1.2, 1.2, 1.2)),
                     device="cpu", outputs=OutputRequest(keep_probabilities=(0, 1)))
    labels = result.labels
    assert labels.spatial_shape == volume.spatial_shape
    np.testing.assert_array_equal(labels.affine, volume.affine)
    assert labels.data.dtype == np.uint8 and set(np.unique(labels.data)) <= {0, 1}
    truth = volume.data > 0
    dice = 2 * (truth & (labels.data == 1)).sum() / (truth.sum() + (labels.data == 1).sum())
    assert dice > 0.85
    # Probabilities come back linearly and still sum to one.
    total = result.probabilities[0].data + result.probabilities[1].data
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_body_crop_changes_nothing_for_a_pointwise_net():
    body = ct_volume()
    volume = Volume(np.pad(body.data, ((0, 0), (12, 12), (12, 12)), constant_values=-1000),
                    body.affine, "CT")
    both = OutputRequest(keep_probabilities=(0, 1))
    plain = segment(volume, ThresholdNet(), card(), device="cpu", outputs=both)
    cropped = segment(volume, ThresholdNet(), card(), device="cpu", outputs=both,
                      crop_to_body=True)
    np.testing.assert_array_equal(cropped.labels.data, plain.labels.data)
    for c in (0, 1):
        np.testing.assert_allclose(cropped.probabilities[c].data, plain.probabilities[c].data,
                                   atol=1e-6)
    assert cropped.provenance["windows"] < plain.provenance["windows"]


def test_body_crop_keeps_the_whole_volumes_normalisation():
    """MR z-score statistics come from the whole volume's foreground also with the crop
    (cropping air away first would move Otsu's threshold and the mean): a pointwise net
    then gives the same labels and probabilities, with fewer windows, on a resampled
    grid too."""
    body = ct_volume()
    data = np.pad(body.data, ((0, 0), (12, 12), (12, 12)), constant_values=-1000) + 1000
    volume = Volume(data.astype(np.float32), body.affine, "MR")
    mr = card(modality="MR", normalization={"scheme": "zscore"}, spacing=(1.0, 1.0, 1.0))
    one = OutputRequest(keep_probabilities=(1,))
    plain = segment(volume, ThresholdNet(), mr, device="cpu", outputs=one)
    cropped = segment(volume, ThresholdNet(), mr, device="cpu", outputs=one,
                      crop_to_body=True)
    assert 0 < (plain.labels.data == 1).mean() < 0.5
    np.testing.assert_array_equal(cropped.labels.data, plain.labels.data)
    np.testing.assert_allclose(cropped.probabilities[1].data, plain.probabilities[1].data,
                               atol=1e-6)
    assert cropped.provenance["windows"] < plain.provenance["windows"]


def test_body_box_of_a_large_volume_is_found_on_a_coarse_view(monkeypatch):
    """Above BODY_BOX_VOXELS the box comes from every k-th voxel: it holds the box found on
    the full grid and is at most the coarse margin wider; a pointwise net's labels stay."""
    from napari_medattn.inference import pipeline
    from napari_medattn.inference.preprocess import body_bounding_box, body_threshold

    body = ct_volume(shape=(30, 34, 26))
    volume = Volume(np.pad(body.data, ((3, 9), (14, 5), (7, 11)), constant_values=-1000),
                    body.affine, "CT")
    data = np.asarray(volume.data)
    threshold = body_threshold(data, "CT")
    exact = body_bounding_box(data, threshold=threshold)
    monkeypatch.setattr(pipeline, "BODY_BOX_VOXELS", data.size // 20)  # every 3rd voxel
    coarse = pipeline._body_box(data, threshold)
    for e, c, size in zip(exact, coarse, data.shape):
        assert c.start <= e.start and c.stop >= e.stop
        assert e.start - c.start <= 3 * 5 and c.stop - e.stop <= 3 * 5
        assert 0 <= c.start and c.stop <= size
    plain = segment(volume, ThresholdNet(), card(), device="cpu")
    cropped = segment(volume, ThresholdNet(), card(), device="cpu", crop_to_body=True)
    np.testing.assert_array_equal(cropped.labels.data, plain.labels.data)


def test_windows_in_noisy_air_are_skipped():
    volume = ct_volume(shape=(16, 40, 40))
    air = volume.data == -1000
    noise = np.random.default_rng(9).normal(0, 30, size=air.sum())
    volume.data[air] = np.clip(-1000 + noise, -1024, -900).astype(np.int16)
    result = segment(volume, ThresholdNet(), card(), device="cpu")
    assert result.provenance["windows_predicted"] < result.provenance["windows"]
    np.testing.assert_array_equal(result.labels.data, (volume.data > 0).astype(np.uint8))


def test_small_components_are_removed():
    volume = ct_volume()
    volume.data[1, 1, 1] = 500  # a one-voxel speck of 1.12 mm^3
    kept = segment(volume, ThresholdNet(), card(), device="cpu")
    cleaned = segment(volume, ThresholdNet(), card(), device="cpu", min_component_mm3=5.0)
    assert kept.labels.data[1, 1, 1] == 1 and cleaned.labels.data[1, 1, 1] == 0
    np.testing.assert_array_equal(cleaned.labels.data[2:], kept.labels.data[2:])


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_geometry_of_files_is_kept(tmp_path, fmt):
    source = ct_volume(shape=(10, 16, 14))
    if fmt == "nifti":
        path = write_nifti(tmp_path / "ct.nii.gz", source)
    else:
        path = tmp_path / "series"
        write_dicom_series(path, source, rescale_intercept=-1024)
    volume = read_volume(path)
    result = segment(volume, ThresholdNet(), card(spacing=(1.0, 1.0, 1.0), orientation="LPS"),
                     device="cpu")
    assert result.labels.spatial_shape == volume.spatial_shape
    np.testing.assert_array_equal(result.labels.affine, volume.affine)
    assert result.labels.meta.get("source") == volume.meta.get("source")
    written = read_volume(write_nifti(tmp_path / "labels.nii.gz", result.labels, source=volume))
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-5)
    np.testing.assert_array_equal(written.data, result.labels.data)


def test_cancel_channels_and_modality_notes():
    volume = ct_volume()
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        segment(volume, ThresholdNet(), card(), device="cpu", cancel=event)
    four_d = Volume(np.stack([volume.data] * 2), volume.affine, "CT")
    with pytest.raises(DimensionError, match="needs 1 input channel"):
        segment(four_d, ThresholdNet(), card(), device="cpu")
    mr = Volume(volume.data, volume.affine, "MR")
    result = segment(mr, ThresholdNet(), card(), device="cpu")
    assert "made for CT; this image is MR" in result.notes[0]


class RecordingThresholdNet(ThresholdNet):
    def forward(self, x):
        from napari_medattn.models.capture import MapKind, record

        record(self, "alpha", x, MapKind.SPATIAL)  # the normalised input itself
        return super().forward(x)


def test_attention_maps_come_back_on_the_source_grid():
    volume = ct_volume(affine=oblique_affine())
    result = segment(volume, RecordingThresholdNet(), card(orientation="RAS"), device="cpu",
                     outputs=OutputRequest(attention_maps=["alpha"]),
                     windows=WindowOptions(skip_empty=False))
    alpha = result.attention["alpha"]
    np.testing.assert_array_equal(alpha.affine, volume.affine)
    np.testing.assert_allclose(alpha.data, (volume.data + 1000) / 2000, atol=1e-5)
    assert result.provenance["parameters"]["attention_maps"] == ["alpha"]
