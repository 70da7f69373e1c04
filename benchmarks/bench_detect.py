"""Lesion detection quality and time: our MedFormer detector against a segmentation +
connected-components baseline, side by side on the same held-out synthetic cases.

Cases: :func:`napari_medattn.training.lesion_synthesis.synthetic_lesion_case` with the
held-out seeds of ``scripts/train_detector.py`` (40-47 by default; never trained on).

* ours: :func:`napari_medattn.detection.detect` with the built-in
  ``medformer-lesion-detector`` (or ``--model``), boxes down to score 0.02;
* segmentation + CC: the package has no lesion segmentation model, so the baseline
  segments FLAIR hyperintensities the classical way, a robust z-score above ``--z``
  inside the head (the package's ``zscore`` normalisation), then
  :func:`~napari_medattn.detection.lesions_from_labels` (26-connected pieces of at least
  ``--min-ml``); each piece scores ``sigmoid(mean z - z)``, so brighter pieces rank first;
* MONAI RetinaNet: built and run forward once here to say whether it works with this
  torch; it is *not* trained in this script (see the printed reason).

Metrics (:mod:`napari_medattn.metrics.detection`): FROC sensitivities at 1/8..8 FP/scan
and CPM (hit: IoU >= 0.1), AP at IoU 0.1 and mAP over IoU 0.1-0.5.

Time: ``detect`` on the 1 mm MNI152 T1 shipped in ``sample_data`` (197 x 233 x 189), from
the Volume in memory to boxes (resampling to the 4 mm model grid included), median of
``--repeats``, with ``--threads`` torch threads.

Usage: ``python benchmarks/bench_detect.py [--threads 1] [--repeats 3] [--model PATH]``
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import napari_medattn
from napari_medattn.detection import Detection, detect, lesions_from_labels
from napari_medattn.inference.preprocess import body_threshold, normalize_intensity
from napari_medattn.io import Volume, read_volume
from napari_medattn.metrics.detection import evaluate_detections
from napari_medattn.models.registry import load_model
from napari_medattn.training.lesion_synthesis import synthetic_lesion_case

SAMPLES = Path(napari_medattn.__file__).parent / "sample_data"


def held_out_case(seed: int, data: Path | None) -> tuple[Volume, list[Detection]]:
    """Case ``seed``: read from ``data`` when it is there, else made again."""
    path = data / f"case_{seed:04d}.npz" if data is not None else None
    if path is not None and path.exists():
        spec = importlib.util.spec_from_file_location(
            "train_detector", Path(__file__).parents[1] / "scripts" / "train_detector.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        return script.read_case(path)
    case = synthetic_lesion_case(seed)
    return case.image, case.lesions


def threshold_cc(image: Volume, z: float, min_ml: float) -> list[Detection]:
    """FLAIR-hyperintensity segmentation + connected components, scored by brightness."""
    data = np.asarray(image.data, dtype=np.float32)
    head = data > body_threshold(data, image.modality)
    score = normalize_intensity(data, {"scheme": "zscore"})
    labels = Volume(((score > z) & head).astype(np.uint8), image.affine, "SEG",
                    {"name": "threshold"})
    pieces = lesions_from_labels(labels, Volume(score, image.affine, "MR"), connectivity=3,
                                 min_volume_ml=min_ml)
    return [Detection(d.centre_mm, d.size_mm, d.axes,
                      score=float(1 / (1 + np.exp(-(d.measurements["mean_intensity"] - z)))),
                      label=1, class_name="lesion", measurements=d.measurements)
            for d in pieces]


def retinanet_status() -> str:
    """Whether MONAI's 3D RetinaNet builds and runs a forward pass with this torch."""
    try:
        from monai.apps.detection.networks.retinanet_network import (
            RetinaNet,
            resnet_fpn_feature_extractor,
        )
        from monai.networks.nets import resnet

        backbone = resnet.ResNet(block=resnet.ResNetBottleneck, layers=[3, 4, 6, 3],
                                 block_inplanes=resnet.get_inplanes(), n_input_channels=1,
                                 conv1_t_stride=(2, 2, 1), conv1_t_size=(7, 7, 7))
        features = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
        net = RetinaNet(spatial_dims=3, num_classes=3, num_anchors=3,
                        feature_extractor=features, size_divisible=(16, 16, 8)).eval()
        with torch.inference_mode():
            started = time.perf_counter()
            out = net(torch.zeros(1, 1, 64, 64, 64))
        return (f"builds and runs ({len(out)} outputs, one 64^3 forward in "
                f"{time.perf_counter() - started:.1f} s, "
                f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters)")
    except Exception as error:  # noqa: BLE001 - any failure is the finding to print
        return f"does not run here: {type(error).__name__}: {str(error).splitlines()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="medformer-lesion-detector")
    parser.add_argument("--seeds", type=int, nargs=2, default=(40, 48),
                        help="held-out case seeds [start, stop)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--z", type=float, default=2.5)
    parser.add_argument("--min-ml", type=float, default=0.02)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--data", type=Path,
                        help="cases written by `scripts/train_detector.py data` (the same "
                             "voxels as making them again, read instead of re-made)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, card = load_model(args.model)
    cases = [held_out_case(seed, args.data) for seed in range(*args.seeds)]
    truths = [lesions for _, lesions in cases]
    ours = [detect(image, model, card, device="cpu", tta=args.tta, min_score=0.02,
                   use_autocast=False).detections for image, _ in cases]
    baseline = [threshold_cc(image, args.z, args.min_ml) for image, _ in cases]
    rows = {"ours": evaluate_detections(ours, truths),
            "threshold_cc": evaluate_detections(baseline, truths)}
    print(f"{len(cases)} held-out cases, {sum(map(len, truths))} lesions")
    print(f"{'method':14s} {'dets':>5s} " + " ".join(f"{r:>6g}" for r in (0.125, 0.25, 0.5, 1, 2,
                                                                           4, 8))
          + "    CPM  AP@0.1  mAP")
    for name, s in rows.items():
        print(f"{name:14s} {s.detections:5d} "
              + " ".join(f"{v:6.3f}" for v in s.sensitivity.values())
              + f"  {s.cpm:.3f}  {s.ap_iou_0_1:.3f}  {s.map_iou_0_1_0_5:.3f}")
    print(f"MONAI RetinaNet: {retinanet_status()}; not trained here: the one training "
          f"budget of this issue (10 minutes of a shared 2-core CPU) went to our detector.")
    brain = read_volume(SAMPLES / "mni152_t1.nii.gz")
    detect(brain, model, card, device="cpu", use_autocast=False)  # warm-up
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        detect(brain, model, card, device="cpu", use_autocast=False)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    print(f"detect on the 1 mm MNI152 T1 {brain.spatial_shape}: {seconds:.2f} s "
          f"(median of {args.repeats}, {args.threads} thread(s); floor 5 s)")
    for name, s in rows.items():
        print(f"FIGURE detect_cpm_{name} {s.cpm:.4f} sensitivity")
        print(f"FIGURE detect_ap_iou0.1_{name} {s.ap_iou_0_1:.4f} ap")
        print(f"FIGURE detect_map_iou0.1-0.5_{name} {s.map_iou_0_1_0_5:.4f} ap")
    print(f"FIGURE detect_time_1mm_brain {seconds:.3f} s")


if __name__ == "__main__":
    main()
