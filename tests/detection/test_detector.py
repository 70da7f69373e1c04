"""The detector's geometry: boxes land on known lesions in patient mm on permuted, flipped,
anisotropic and oblique scans (a pointwise oracle network stands in for trained weights)."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from napari_medattn.detection.detector import decode_maps, detect
from napari_medattn.errors import ModelError
from napari_medattn.inference.pipeline import segment
from napari_medattn.io.volume import Volume
from napari_medattn.models.card import ModelCard

LESION_MM = np.array([12.0, -20.0, 31.0])
SIZE_MM = 12.0


class Oracle(nn.Module):
    """Centre logit rises with intensity; constant 12 mm boxes. Pointwise, so flip-exact."""

    def forward(self, x):
        size = torch.full_like(x, float(np.log(SIZE_MM / 10.0)))
        return torch.cat([2.0 * (x - 2.5), size, size, size], dim=1)


def card(**kw):
    return ModelCard(name="oracle", architecture="medformer", task="detection",
                     classes=[("background", "#000000"), ("lesion", "#ff0000")],
                     patch_size=(32, 32, 32), **kw)


def scan(affine, shape=(40, 44, 36)):
    """A head-like box of intensity 1 with a Gaussian lesion (peak 4) at LESION_MM."""
    index = np.indices(shape).reshape(3, -1).T
    mm = index @ affine[:3, :3].T + affine[:3, 3]
    r2 = ((mm - LESION_MM) ** 2).sum(1)
    data = 1.0 + 3.0 * np.exp(-r2 / (2 * 4.0 ** 2))
    return Volume(data.reshape(shape).astype(np.float32), affine, "MR", {"name": "phantom"})


def _affine(matrix, spacing, centre_index):
    affine = np.eye(4)
    affine[:3, :3] = matrix * np.asarray(spacing)
    # Place the lesion well inside the grid: index centre_index is at LESION_MM + offset.
    affine[:3, 3] = LESION_MM + [3.0, -2.0, 1.5] - affine[:3, :3] @ centre_index
    return affine


AFFINES = {
    "lps": _affine(np.eye(3), (2.0, 2.0, 2.0), (20, 22, 18)),
    "permuted-flipped": _affine(np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]], float),
                                (1.5, 2.0, 2.5), (20, 22, 18)),
    "oblique": _affine(Rotation.from_euler("xyz", [25, -10, 35], degrees=True).as_matrix(),
                       (2.0, 1.8, 2.2), (20, 22, 18)),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("grid", [{}, {"orientation": "RAS", "spacing": (2.5, 2.5, 2.5)}],
                         ids=["native", "resampled"])
def test_box_lands_on_the_lesion_in_patient_mm(name, grid):
    volume = scan(AFFINES[name])
    result = detect(volume, Oracle(), card(**grid), device="cpu", min_score=0.5,
                    use_autocast=False)
    assert len(result.detections) == 1
    det = result.detections[0]
    # Within a third of the model grid's voxel (its peak is refined below one voxel).
    voxel = min(grid.get("spacing", volume.spacing))
    assert np.linalg.norm(det.centre_mm - LESION_MM) < voxel / 3
    assert np.allclose(det.size_mm, SIZE_MM, rtol=1e-4) and det.class_name == "lesion"
    # The box is aligned with the model grid, whose axes are the scan's (reordered).
    direction = volume.direction
    assert np.allclose(np.abs(det.axes.T @ direction).max(axis=1), 1.0, atol=1e-6)
    assert np.isclose(det.score, result.heatmap.data.max())


def test_flip_tta_is_exact_for_an_equivariant_network():
    volume = scan(AFFINES["oblique"])
    plain = detect(volume, Oracle(), card(), device="cpu", min_score=0.5, use_autocast=False)
    flipped = detect(volume, Oracle(), card(), device="cpu", min_score=0.5, tta=True,
                     use_autocast=False)
    assert np.allclose(plain.detections[0].centre_mm, flipped.detections[0].centre_mm, atol=1e-4)
    assert flipped.provenance["parameters"]["tta"] is True


def test_no_lesion_is_a_result_and_a_segmenter_is_refused():
    volume = scan(AFFINES["lps"])
    volume = Volume(np.ones_like(volume.data), volume.affine, "MR", {"name": "clean"})
    result = detect(volume, Oracle(), card(), device="cpu", min_score=0.5, use_autocast=False)
    assert result.detections == [] and "No lesion" in result.provenance["notes"][-1]
    segmenter = ModelCard(name="seg", architecture="unet", classes=[("a", "#000000")],
                          patch_size=(32, 32, 32))
    with pytest.raises(ModelError):
        detect(volume, Oracle(), segmenter)
    # ... and segment() refuses a detector (its card lists fewer classes than it outputs).
    with pytest.raises(ModelError, match="detection model"):
        segment(volume, Oracle(), card())


def test_decode_merges_a_plateau_and_keeps_separate_lesions():
    heat = np.zeros((2, 30, 30, 30), np.float32)
    heat[0, 5, 5, 5] = 0.9
    heat[0, 5, 5, 6] = 0.9          # a two-voxel plateau: one box after NMS
    heat[1, 20, 20, 20] = 0.6
    heat[1, 25, 25, 25] = 0.01      # below min_score
    size = np.full((3, 30, 30, 30), 6.0, np.float32)
    dets = decode_maps(heat, size, np.diag([2.0, 2.0, 2.0, 1.0]), class_names=["a", "b"])
    assert [(d.class_name, round(d.score, 2)) for d in dets] == [("a", 0.9), ("b", 0.6)]
    assert np.allclose(dets[1].centre_mm, [40, 40, 40])


def test_grouped_options_reach_the_engine_and_the_decoder():
    from napari_medattn.detection.detector import DecodeOptions
    from napari_medattn.inference.window_options import WindowOptions

    volume = scan(AFFINES["lps"])
    # A softmax asked for is overridden: the detector's maps are probabilities and sizes.
    result = detect(volume, Oracle(), card(), device="cpu", min_score=0.5,
                    decoding=DecodeOptions(max_detections=1, nms_iou=0.2),
                    windows=WindowOptions(overlap=0.5, batch_size=1, activation="softmax"),
                    use_autocast=False)
    assert len(result.detections) == 1
    assert np.linalg.norm(result.detections[0].centre_mm - LESION_MM) < 1.0
    assert np.allclose(result.detections[0].size_mm, SIZE_MM, rtol=1e-4)
    parameters = result.provenance["parameters"]
    assert (parameters["overlap"], parameters["batch_size"], parameters["max_detections"],
            parameters["nms_iou"]) == (0.5, 1, 1, 0.2)
