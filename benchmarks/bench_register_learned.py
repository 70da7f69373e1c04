"""Learned registration figures: inference time, and Dice / folding against ANTsPy SyN.

1. **Inference time** of the network step on a 2 mm brain (the MNI152 T1, 99 x 117 x 95):
   the pair resampled onto the model grid, the forward pass and the velocity's
   exponential (:func:`napari_medattn.registration.learned.predict_field`), median of
   ``--repeats``; and the whole ``register_learned`` call (with its affine pre-alignment).
   Floor: at most 2 s for the network step.
2. **Accuracy** on the 2 mm MNI152 pair of ``bench_register.py`` (the T1 moved by a
   held-out smooth diffeomorphism, velocity seed 7, up to 6 mm, with a gamma 0.8 intensity
   change; the same pair, labels and scoring code, imported from it) and on one held-out
   cross-contrast synthetic pair (brains 0 and 1 of the stream
   ``synthetic_brain_cases(seed 9017)`` that the training never saw: two label-to-image or
   T1 renderings with different random contrasts). Dice and HD95 of the warped tissue
   labels (CSF, GM, WM), % folding and SDlogJ of the deformation, time. Ours: learned
   (TransMorph-style and VoxelMorph-style) and learned + refine (TransMorph-style, 20
   classical iterations at full resolution after 40 at half, with register_learned's
   refinement settings: the modality-pair table's metric, twice its regularisation
   weight). Peer: ANTsPy
   ``registration(type_of_transform="SyN")`` (``--no-ants`` skips it).

Every engine on one thread. Run from the repository root::

    .venv/bin/python benchmarks/bench_register_learned.py [--repeats 3] [--no-ants]

Ends with ``FIGURE`` lines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

from bench_register import ants_syn, deformable_pair, overlap, row_figures  # noqa: E402

from napari_medattn.io import Volume  # noqa: E402
from napari_medattn.metrics.registration import jacobian_determinant  # noqa: E402
from napari_medattn.models.registry import load_model  # noqa: E402
from napari_medattn.registration import Settings, register, warp  # noqa: E402
from napari_medattn.registration.engine import normalise_intensities  # noqa: E402
from napari_medattn.registration.learned import predict_field, register_learned  # noqa: E402

MODELS = {"transmorph": "transmorph-brain-2mm", "voxelmorph": "voxelmorph-brain-2mm"}
REFINE_ITERATIONS = 20


def inference_figures(repeats: int) -> list[tuple[str, float, str]]:
    fixed, moving, _, _ = deformable_pair()
    linear = register(fixed, moving, Settings(method="affine", metric="mi")).linear
    normalised = [Volume(normalise_intensities(np.asarray(v.data, np.float32)), v.affine)
                  for v in (fixed, moving)]
    figures = []
    for short, name in MODELS.items():
        net, card = load_model(name)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predict_field(net, card, *normalised, linear)
            times.append(time.perf_counter() - start)
        whole = []
        for _ in range(repeats):
            whole.append(register_learned(fixed, moving, model=name).seconds)
        print(f"{name}: network step {statistics.median(times):.2f} s, whole call "
              f"{statistics.median(whole):.2f} s (affine pre-alignment included)")
        figures += [(f"learned_{short}_inference_time", statistics.median(times), "s"),
                    (f"learned_{short}_total_time", statistics.median(whole), "s")]
    return figures


def held_out_pair():
    from train_registration import held_out_pairs

    fixed, moving, fixed_labels, moving_labels = next(held_out_pairs(1))
    return fixed, moving, fixed_labels, moving_labels


def score(result, moving_labels, fixed, fixed_labels, seconds):
    det = jacobian_determinant(result.transform, fixed.affine, fixed.spatial_shape)
    return overlap(warp(moving_labels, result.transform, fixed), fixed_labels), det, seconds


def accuracy_figures(pair_name: str, pair, peers: bool) -> list[tuple[str, float, str]]:
    fixed, moving, fixed_labels, moving_labels = pair
    before = overlap(Volume(np.asarray(moving_labels.data), fixed.affine, "SEG"), fixed_labels)
    print(f"{pair_name}: unregistered Dice " + ", ".join(f"{k} {v[0]:.3f}"
                                                        for k, v in before.items()))
    rows = {}
    for short, name in MODELS.items():
        result = register_learned(fixed, moving, model=name)
        rows[f"learned_{short}"] = score(result, moving_labels, fixed, fixed_labels,
                                         result.seconds)
    result = register_learned(fixed, moving, model=MODELS["transmorph"],
                              refine_iterations=REFINE_ITERATIONS)
    rows["learned_refine_transmorph"] = score(result, moving_labels, fixed, fixed_labels,
                                              result.seconds)
    if peers:
        rows["ants_syn"] = ants_syn(fixed, moving, fixed_labels, moving_labels)
    return row_figures(rows, pair_name, fixed_labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ants", action="store_true", help="skip ANTsPy SyN")
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures = inference_figures(args.repeats)
    figures += accuracy_figures("mni152", deformable_pair(), not args.no_ants)
    figures += accuracy_figures("heldout", held_out_pair(), not args.no_ants)
    for name, value, unit in figures:
        print(f"FIGURE {name} {value:.4g} {unit}")


if __name__ == "__main__":
    main()
