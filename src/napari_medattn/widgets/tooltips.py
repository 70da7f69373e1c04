"""Tooltips of the analysis widgets, kept in one place (as micro-sam does), and the model
card summary every widget that offers a model shows."""

from __future__ import annotations

from napari_medattn.models.card import NOT_CLINICAL, ModelCard

SEGMENT = {
    "image": "The scan to segment (a layer opened with napari-medattn, so its patient "
             "geometry is known).",
    "model": "Built-in and user models (user models: the napari-medattn model folder or "
             "MEDATTN_MODEL_PATH). Hover an entry for its model card.",
    "open_model": "Add a model folder: card.json + weights.safetensors, or a MONAI "
                  "bundle.",
    "device": "Where the network runs: auto picks a CUDA GPU, then Apple MPS, then the CPU.",
    "tta": "Test-time augmentation: average the predictions over flips (slower, smoother).",
    "uncertainty": "Add an uncertainty map in [0, 1]: predictive entropy, or the variance "
                   "across the test-time augmentations.",
    "probabilities": "Add a probability layer for each ticked class.",
    "attention": "Add the ticked spatial attention maps of the network as heat-map layers "
                 "(averaged over heads, blended like the probabilities).",
    "crop": "Run only inside the bounding box of the body (faster; outside is background).",
    "min_component": "Remove connected pieces of each class smaller than this volume "
                     "(mm^3); 0 keeps everything.",
    "run": "Segment the scan in the background; the viewer stays usable. Running again "
           "replaces this model's previous result on this scan, but never labels you "
           "have painted.",
    "cancel": "Stop the run between two windows; no layer is added.",
    "statistics": "Per class: voxels, volume, intensity inside (HU for CT), centroid and "
                  "bounding box of the voxel centres in patient mm (LPS: x to the "
                  "patient's left, y posterior, z superior).",
    "export": "Save the statistics table as CSV.",
}


def model_card_tooltip(card: ModelCard) -> str:
    """A plain-text summary of a model card for a tooltip: task, classes, modality,
    input grid, training data, measured metrics, licence and intended use."""
    classes = ", ".join(card.class_names)
    spacing = (" x ".join(f"{s:g}" for s in card.spacing) + " mm") if card.spacing else "native"
    metrics = ", ".join(f"{name} {value:.3g}" for name, value in card.metrics.items()) or "none"
    return "\n".join([
        f"{card.name} ({card.architecture}): {card.task}",
        f"Classes: {classes}",
        f"Modality: {card.modality}; window {'x'.join(map(str, card.patch_size))} voxels "
        f"at {spacing}",
        f"Training data: {card.training_data}",
        f"Metrics: {metrics} (on {card.evaluated_on})",
        f"Licence: {card.license}",
        f"Intended use: {card.intended_use}",
        # Whatever a user card says, the tooltip states it.
        *([] if "clinical" in card.intended_use.lower() else [NOT_CLINICAL]),
    ])
