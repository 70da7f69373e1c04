"""Scan classification: a MedFormer classifier's probability for a whole scan, and the
heat map (Grad-CAM or DSSA routing, through :func:`napari_medattn.explain.explain`) that
shows where it looked.

>>> result = classify(volume, module, card)      # a classifier and its card (load_model)
>>> result.probability                           # of class 1
>>> where = heat_map(volume, module, card, "gradcam").volume   # on the scan's geometry
"""

from napari_medattn.classification.classify import (
    DEFAULT_CLASSIFIER,
    HEATMAPS,
    ClassificationResult,
    check_classifier,
    classifier_input,
    classify,
    heat_map,
    mask_in_window,
)

__all__ = [
    "DEFAULT_CLASSIFIER",
    "HEATMAPS",
    "ClassificationResult",
    "check_classifier",
    "classifier_input",
    "classify",
    "heat_map",
    "mask_in_window",
]
