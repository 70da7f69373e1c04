"""Lesion detection: the Detection record (boxes in patient mm), 3D NMS, lesions from any
label map, and the MedFormer detector.

>>> result = detect(volume, module, card)        # a detector and its card (load_model)
>>> result.above(0.3)                           # Detection records, LPS mm
>>> lesions = lesions_from_labels(labels_volume, image_volume)
>>> kept = nms(detections, iou_threshold=0.1)
"""

from napari_medattn.detection.boxes import (
    Detection,
    box_from_voxels,
    boxes_in_frame,
    nms,
    pairwise_iou,
)
from napari_medattn.detection.detector import DetectionResult, decode_maps, detect
from napari_medattn.detection.lesions import lesions_from_labels, longest_axial_diameter

__all__ = [
    "Detection",
    "DetectionResult",
    "decode_maps",
    "detect",
    "box_from_voxels",
    "boxes_in_frame",
    "lesions_from_labels",
    "longest_axial_diameter",
    "nms",
    "pairwise_iou",
]
