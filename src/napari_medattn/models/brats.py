"""The BraTS vocabulary, in one place for the nets, inference, widgets and training: the
four MR contrasts, the label values, their colours, the evaluated regions, and the mapping
between BraTS labels and a network's class indices.

BraTS labels: 1 necrotic / non-enhancing tumour core, 2 peritumoral oedema, 4 enhancing
tumour (3 is unused since BraTS 2017). The evaluated regions are unions of labels: whole
tumour (WT: 1, 2, 4), tumour core (TC: 1, 4), enhancing tumour (ET: 4).
"""

from __future__ import annotations

import numpy as np

from napari_medattn.errors import DimensionError

__all__ = ["BRATS_MODALITIES", "MODALITY_NAMES", "BRATS_LABELS", "LABEL_COLOURS", "REGIONS",
           "CLASS_LABELS", "region_masks", "labels_to_classes", "classes_to_labels"]

#: The four contrasts in BraTS's file-name spelling, in the shipped models' channel order.
BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: How each contrast is written for people (widget rows, the lesion renderer's names).
MODALITY_NAMES: dict[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
#: BraTS label values and their names.
BRATS_LABELS: dict[int, str] = {1: "necrotic core", 2: "oedema", 4: "enhancing tumour"}
#: Display colours of the BraTS labels by value (necrotic core red, oedema green,
#: enhancing tumour yellow).
LABEL_COLOURS: dict[int, str] = {1: "#e6194b", 2: "#3cb44b", 4: "#ffe119"}
#: The evaluated regions, each a union of BraTS labels.
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
#: Network class index -> BraTS label (class 0 is background).
CLASS_LABELS: tuple[int, ...] = (0, 1, 2, 4)


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Whole tumour, tumour core and enhancing tumour masks (bool) of a BraTS label map."""
    labels = np.asarray(labels)
    return {name: np.isin(labels, values) for name, values in REGIONS.items()}


def labels_to_classes(labels: np.ndarray) -> np.ndarray:
    """BraTS labels (0, 1, 2, 4) as class indices (0, 1, 2, 3) for a network's logits.

    Raises
    ------
    DimensionError
        The map holds a value that is not a BraTS label.
    """
    labels = np.asarray(labels)
    unknown = np.setdiff1d(np.unique(labels), CLASS_LABELS)
    if unknown.size:
        raise DimensionError(f"BraTS labels are 0, 1, 2 and 4; this map also holds "
                             f"{unknown.tolist()}.")
    lookup = np.zeros(max(CLASS_LABELS) + 1, dtype=np.int64)
    lookup[list(CLASS_LABELS)] = np.arange(len(CLASS_LABELS))
    return lookup[labels]


def classes_to_labels(classes: np.ndarray) -> np.ndarray:
    """Class indices (0..3) back to BraTS labels (0, 1, 2, 4), uint8."""
    return np.asarray(CLASS_LABELS, dtype=np.uint8)[np.asarray(classes)]
