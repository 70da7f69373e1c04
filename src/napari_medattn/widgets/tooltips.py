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
    "precision": "auto: the network computes in bfloat16/float16 on GPUs and on CPUs that "
                 "compute bfloat16 natively (1.2-1.8x faster on such a CPU; labels differ "
                 "from float32 in 0.03-0.3 % of the voxels); float32: exact, "
                 "slower.",
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

DETECT = {
    "image": "The scan to search for lesions (a layer opened with napari-medattn, so its "
             "patient geometry is known).",
    "model": "Detectors among the built-in and user models (a segmentation model cannot "
             "detect). Hover an entry for its model card.",
    "open_model": SEGMENT["open_model"],
    "device": SEGMENT["device"],
    "run": "Detect lesions in the background; boxes and centres are drawn on the scan.",
    "cancel": "Stop the run between two windows; no layer is added.",
    "threshold": "Lowest score shown: boxes, centres and table follow the slider without "
                 "running again.",
    "labels": "A Labels layer on the scan's grid (Segment's result, a painted one, or one "
              "read from a file).",
    "from_labels": "Each connected piece of each label becomes a lesion: box, centroid, "
                   "volume, longest axial diameter and mean intensity.",
    "table": "Lesions by score: centre in patient mm (LPS: x to the patient's left, y "
             "posterior, z superior), box size in mm, volume. Click a row to go there.",
    "export": "Save the table as CSV.",
    "classifier": "Scan classifiers among the built-in and user models: one probability per "
                  "scan. Hover an entry for its model card (its task and held-out AUC).",
    "heatmap": "Where the classifier looked: gradcam (Grad-CAM of the positive class), "
               "routing (which regions the DSSA attention routes to), or none.",
    "classify": "Classify the scan in the background; the probability is shown here and the "
                "heat map added as a layer on the scan.",
}

FINETUNE = {
    "image": "The scan to fine-tune on (opened with napari-medattn, so its patient geometry "
             "is known).",
    "labels": "The label map to learn, on the scan's grid: every voxel counts and 0 is "
              "background, so correct a model's result (Segment) rather than paint a few "
              "strokes on an empty layer. Its values must be the base model's classes.",
    "model": "The model to start from (built-in or user). Hover an entry for its model "
             "card. The new model keeps its classes, window, spacing and normalisation.",
    "name": "Name of the new model and of its folder in the per-user model folder; an "
            "existing name is refused.",
    "steps": "Training steps (batches of random patches). On a CPU each step at a 64^3 "
             "window takes seconds.",
    "lr": "Peak learning rate (AdamW, warm-up then cosine decay). Keep it small so the "
          "model adapts without forgetting.",
    "device": "Where training and the final run happen: auto picks a CUDA GPU, then Apple "
              "MPS, then the CPU.",
    "start": "Fine-tune in the background, then segment the scan with the new model, save "
             "it (listed by 'medattn models' and the Segment widget) and add its labels.",
    "cancel": "Stop between two steps; no model is saved and no layer is added.",
    "plot": "Training loss (Dice + cross-entropy) of every step, drawn as it trains.",
}


INSPECTOR = {
    "image": "The scan to inspect (a layer opened with napari-medattn, so its patient "
             "geometry is known).",
    "segment_run": "Pick a previous Segment run to inspect its scan with its model.",
    "model": "Built-in and user models. Hover an entry for its model card.",
    "open_model": "Add a model folder: card.json + weights.safetensors, or a MONAI "
                  "bundle.",
    "device": "Where the network runs: auto picks a CUDA GPU, then Apple MPS, then the CPU.",
    "method": "What to show: class-activation maps (gradcam, gradcam++, hirescam, layercam), "
              "the network's own attention (gate, cbam, channels), rollout, occlusion, or "
              "query: what a clicked voxel attends to in a token-attention block.",
    "layer": "The layer (or for query, the attention block) the map comes from; default: "
             "the method's usual layer (native maps: every level).",
    "head": "Attention head of the query block; 'mean of heads' averages them.",
    "target": "The class whose prediction is explained.",
    "region": "Restrict the explained prediction to the voxels of a labels layer on this "
              "scan (e.g. one lesion or structure you painted); by default, the voxels the "
              "model predicts as the class.",
    "faithfulness": "Also score each map: deletion and insertion areas (does removing the "
                    "map's top voxels lower the class score?) and stability under small "
                    "input noise. Costs about two more passes.",
    "run": "Compute the maps in the background; for query, prepare the model once so "
           "each click is fast.",
    "cancel": "Stop the running job; no layer is added.",
    "query_mode": "When on, a click on the scan shows what that voxel attends to (and for "
                  "DSSA, the regions its region routed to and the keys it kept).",
    "blending": "How maps combine with the scan: additive (glow) or translucent (cover).",
    "opacity": "Opacity of the inspector's maps.",
    "threshold": "Hide map values below this percentage of the map's maximum.",
    "results": "Each map with its faithfulness numbers: deletion AUC (lower is better), "
               "insertion AUC (higher is better), stability (correlation under noise) and "
               "whether the map is telling.",
    "chart": "Channel attention: the strongest channels of the selected map.",
    "uncertainty_kind": "Entropy of the predicted probabilities, or their variance across "
                        "flipped copies (test-time augmentation, slower).",
    "uncertainty_button": "Segment with the chosen model and add its uncertainty map.",
    "uncertainty_source": "The uncertainty map to rank (from here or from a Segment run).",
    "slices": "Axial slices with the highest mean uncertainty, at least 5 mm apart; click "
              "one to go there.",
}


FUSE = {
    "base": "The scan the overlays are fused onto (its grid is the reference).",
    "overlay": "The overlay to fuse or adjust (PET, MR, another CT). Each overlay keeps its "
               "own colormap, window and opacity.",
    "transform": "A registration transform (ITK file, fixed = base mm -> moving = overlay "
                 "mm), e.g. saved by the Register widget. Without a file, the Register "
                 "widget's result is used when the overlay was registered to the base "
                 "(\"from Register\"); without either, both scans must share one patient "
                 "space.",
    "run": "Show the overlay over the base: as it is where napari can place it by its "
           "geometry; an oblique overlay, or one seen through a rotating transform, is "
           "resampled onto the base grid in the background.",
    "cancel": "Stop the resampling; no layer is added.",
    "colormap": "Overlay colour table; values below the window are transparent.",
    "preset": "Overlay window: PET in SUV (0-5, 0-10, 0-20) or the CT presets in HU.",
    "low": "Lower end of the overlay window (its units: SUV, HU, ...).",
    "high": "Upper end of the overlay window.",
    "opacity": "Overlay opacity at full fade.",
    "fade": "Fade from the base alone (left) to the overlay at its opacity (right).",
    "mode": "blend: overlay over base; checkerboard: alternate tiles; difference: base "
            "minus overlay, each through its window (mid-grey where they agree); side by "
            "side: one canvas each.",
    "tile": "Checkerboard tile edge in mm.",
    "planes": "Axial, coronal and sagittal views together; a click in one moves the "
              "others to that point.",
    "mip": "A rotating maximum intensity projection of the overlay in 3D.",
}

COHORT_RESULTS = {
    "folder": "A cohort's output folder (medattn cohort run ... --out DIR): its "
              "results.parquet or results.csv is shown below.",
    "browse": "Choose a cohort's output folder.",
    "table": "One row per case: status, runtime and the task's figures (volumes in mL, "
             "Dice, HD95 in mm where a reference exists). Click a row to open that case's "
             "scan with its outputs; hover a failed case for its error.",
    "open": "Open the selected case's scan and its outputs (labels, maps) as layers.",
    "cancel": "Stop opening the case; no layer is added.",
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

REGISTER = {
    "fixed": "The scan that stays put: results are shown on its grid (any scan opened with "
             "napari-medattn).",
    "moving": "The scan to align to the fixed one; grids, orientations and spacings may "
              "differ.",
    "method": "rigid / similarity / affine: one matrix; deformable: affine, then a smooth "
              "diffeomorphic field; learned: affine, then a registration network's field "
              "(one pass); learned-refine: then classical iterations from it; landmarks: the "
              "least-squares fit of the clicked pairs.",
    "defaults": "The contrasts read off the two scans (modality, and the MR weighting their "
                "names give) and the row of the defaults table they chose; choosing the scans "
                "or the method fills Metric, Levels, Regularisation and Smoothness from it.",
    "metric": "mi: Mattes mutual information (any contrasts: T1/T2, MR/CT, PET/CT); mse and "
              "ncc (local normalised cross-correlation): the same contrast.",
    "levels": "Pyramid shrink factors, coarse to fine (4,2,1: quarter, half, full "
              "resolution).",
    "iterations": "Most L-BFGS iterations per level of the linear stage; learned-refine: "
                  "classical iterations at full resolution (twice as many at half first).",
    "weight": "Deformable only: weight of the diffusion penalty (higher: smoother, less "
              "exact).",
    "smoothing": "Deformable only: Gaussian sigma of the velocity field in mm.",
    "model": "Learned methods: the registration network (a shipped model, or a model "
             "folder opened with Open model...).",
    "mask": "Optional labels layer on the fixed scan's grid: only its voxels > 0 count in "
            "the metric (e.g. the brain, to ignore the skull and neck).",
    "device": "Where the optimiser runs: auto uses the CPU; cuda or mps where present.",
    "run": "Register in the background; the moving scan follows the optimisation on screen. "
           "Clicked landmark pairs (3 or more) start the run from their fit.",
    "cancel": "Stop the registration; the moving scan goes back where it was and nothing "
              "is kept.",
    "keep": "Stop the registration and keep the last state it reached as the result "
            "(layers, QA, transform to save).",
    "landmarks": "Add two Points layers (fixed, moving) in add mode: click a point on each "
                 "scan, in any view; pairs match by order and their residuals show below.",
    "apply": "Warp the chosen labels layer (drawn on the moving scan) onto the fixed grid, "
             "nearest neighbour; class names are kept.",
    "save": "Save the transform (fixed mm -> moving mm): ITK .tfm for linear, "
            "displacement-field NIfTI for deformable (SimpleITK, ANTs, 3D Slicer read both).",
    "load": "Load an ITK transform file or displacement-field NIfTI and show its result.",
    "compare": "Add a checkerboard (tile size in mm) or difference layer of the fixed and "
               "the registered moving scan.",
    "fade": "Opacity of the moving scan over the fixed one.",
    "grid": "Add the deformation on the current axial slice: a regular grid moved by the "
            "transform (straight lines: no deformation there).",
}

MULTIMODAL = {
    "modality": "The scan shown as this contrast (guessed from layer names and DICOM series "
                "descriptions; change it if the guess is wrong). Any may stay empty: the "
                "model segments from the scans given.",
    "model": "Multimodal models (their cards name the modalities they take). Hover an entry "
             "for its model card.",
    "device": SEGMENT["device"],
    "precision": SEGMENT["precision"],
    "attention": "Also add, for each given scan, a map of its weight in the fusion at every "
                 "voxel (0 to 1; the given scans' weights sum to 1).",
    "run": "Segment in the background: the scans are brought onto the first given scan's "
           "grid (T1, T1ce, T2, FLAIR order) by their patient coordinates, or by a Register "
           "result on that scan.",
    "cancel": "Stop the segmentation; no layer is added.",
    "volumes": "Whole tumour (labels 1, 2, 4), tumour core (1, 4) and enhancing tumour (4) "
               "in mL.",
    "weights": "This scan's share of the fused features over the tumour the model found "
               "(over the whole volume when it found none).",
}
