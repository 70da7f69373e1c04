"""Time of a multimodal brain-tumour segmentation at 1 mm on this CPU: all four modalities
and one, against the single-scan pipeline on the same scan, in one run.

    python benchmarks/bench_multimodal.py [--model dmaf-brain-tumour] [--repeats 3] \
        [--threads 2]

Scans: the 1 mm MNI152 T1 shipped in ``sample_data`` (197 x 233 x 189 voxels) as T1, and
three contrasts made from it by intensity transforms (T1ce: the T1 scaled by 1.1; T2: the
head's intensities inverted; FLAIR: the T2-like scan with its brightest tenth clipped), so
the four are distinct scans on one 1 mm grid; the time does not depend on their content.

Rows (each the median of ``--repeats`` runs, wall and CPU time, model loaded beforehand):

* ``four``: :func:`~napari_medattn.inference.multimodal.segment_multimodal` with t1, t1ce,
  t2 and flair: onto the reference grid, to the card's 2 mm grid, normalised, sliding
  window, labels back on the 1 mm grid, WT/TC/ET volumes and modality weights;
* ``one``: the same with the T1 alone;
* ``single-scan``: :func:`~napari_medattn.inference.segment` of the default single-scan
  model on the T1 (the pipeline every Segment run takes), for scale.

Ends with ``FIGURE`` lines (seconds; the four/single-scan ratio).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from napari_medattn.inference import segment
from napari_medattn.inference.multimodal import segment_multimodal
from napari_medattn.io import Volume, read_volume
from napari_medattn.models.registry import default_model, load_model

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_medattn" / "sample_data" \
    / "mni152_t1.nii.gz"


def four_scans() -> dict[str, Volume]:
    """The T1 and three contrasts derived from it, on its exact 1 mm grid."""
    t1 = read_volume(SAMPLE)
    data = np.asarray(t1.data, dtype=np.float32)
    head = data > np.percentile(data, 30)
    t2 = np.where(head, data.max() - data, 0).astype(np.float32)
    made = {"t1": data, "t1ce": 1.1 * data, "t2": t2,
            "flair": np.minimum(t2, np.percentile(t2[head], 90)).astype(np.float32)}
    return {k: Volume(v, t1.affine.copy(), "MR", {**t1.meta, "name": f"mni152 {k}",
                                                   "source": f"{SAMPLE}#{k}"})
            for k, v in made.items()}


def timed(call, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of ``call()`` over ``repeats`` runs, and its result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = call()
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    return statistics.median(walls), statistics.median(cpus), result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dmaf-brain-tumour")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scans = four_scans()
    module, card = load_model(args.model)
    single_module, single_card = load_model(default_model().name)
    options = {"device": "cpu"}
    rows = {
        "four": lambda: segment_multimodal(scans, module, card, **options),
        "one": lambda: segment_multimodal({"t1": scans["t1"]}, module, card, **options),
        "single-scan": lambda: segment(scans["t1"], single_module, single_card, **options),
    }
    shape = scans["t1"].spatial_shape
    print(f"scans {shape} at {scans['t1'].spacing.tolist()} mm; model {card.name} "
          f"({card.architecture}, window {card.patch_size} at {card.spacing} mm); "
          f"single-scan model {single_card.name}; torch threads {args.threads}")
    figures = {}
    for name, call in rows.items():
        wall, cpu, result = timed(call, args.repeats)
        figures[name] = wall
        extra = ""
        if hasattr(result, "volumes_ml"):
            extra = (f", WT {result.volumes_ml['WT']:.1f} mL, weights "
                     + ", ".join(f"{k} {v:.2f}" for k, v in result.modality_weights.items()))
        print(f"{name:12s} wall {wall:6.2f} s   CPU {cpu:6.2f} s{extra}", flush=True)
    print(f"FIGURE multimodal_four_modalities_1mm {figures['four']:.2f} s")
    print(f"FIGURE multimodal_one_modality_1mm {figures['one']:.2f} s")
    print(f"FIGURE single_scan_segment_1mm {figures['single-scan']:.2f} s")
    print(f"FIGURE multimodal_four_vs_single_scan {figures['four'] / figures['single-scan']:.2f} "
          f"ratio")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
