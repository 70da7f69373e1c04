"""End-to-end segmentation (file -> labels on disk): ``medattn segment`` against a MONAI
pipeline with the same network, window, overlap and Gaussian blending, in one run.

Volumes
-------
* the 1 mm MNI152 T1 shipped in ``sample_data`` (197 x 233 x 189, MR);
* a CT-sized phantom of ``--ct-shape`` (default 512 x 512 x 300, 0.8 x 0.8 x 1.5 mm,
  int16 HU, gzipped NIfTI), synthesised once: an elliptic body cylinder in air with a fat
  rim, soft tissue, two lungs, a spine and noise (see :func:`synthesise_ct`).

Models: the built-in 3D models when installed (``--models`` names them); otherwise
untrained networks with the architectures, configs, window, spacing and normalisation that
``scripts/train_builtin_models.py`` defines, saved with their cards into the work folder
(the output says which were used).

Each run is a fresh Python process that imports everything and loads the model, then is
timed from the first byte read to the label file written (the model load is outside the
timing on both sides), and reports its peak resident memory (``ru_maxrss``, which includes
the interpreter, torch and the model: about 0.4 GB before any image is read).

* ours: ``napari_medattn.cli.main(["segment", ...])``, i.e. read, reorient and resample to
  the card, normalise, our sliding window (empty windows skipped, streamed blending),
  back to the source grid, write NIfTI and the provenance json;
* MONAI: ``LoadImage`` (nibabel) -> ``Orientation`` -> ``Spacing`` (bilinear) -> the same
  normalisation function -> ``monai.inferers.sliding_window_inference`` (softmax per
  window, Gaussian, same sigma) -> argmax -> ``ResampleToMatch`` (nearest) -> nibabel save.

Ours runs twice: as a user gets it (``ours``: ``--autocast auto``, the default, which is
bfloat16 on CPUs that compute it natively and float32 elsewhere; the row says which, from
the provenance) and in float32 (``ours-float32``: ``--autocast off``), so the comparison
with MONAI's float32 pipeline is there both ways; MONAI runs float32 (no autocast). Each
run reports its wall time and its CPU time (``time.process_time`` over the same span); on
a CPU shared with other jobs the wall times of single runs vary several-fold, while the
CPU time of a run with one torch thread (``--threads 1`` on both sides) hardly moves, so
the CPU-time ratio is the figure to trust there. ``--crop`` adds a row of ours in float32
with ``--crop-to-body`` (fewer windows: the network runs only over the body's bounding
box; its labels are compared with MONAI's and with our uncropped float32 run). Runs
alternate MONAI, ours, ours-float32 (and the crop row) ``--repeats`` times; ratios are of
the medians. Label agreement is the Dice of each foreground class between two label maps
and the fraction of voxels with the same label (napari_medattn.metrics): ours and
ours-float32 against MONAI, and ours against ours-float32. Ends with ``FIGURE`` lines.

Usage: ``python benchmarks/bench_segment.py [--workdir DIR] [--repeats 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MNI = ROOT / "src" / "napari_medattn" / "sample_data" / "mni152_t1.nii.gz"
TRAINING_SCRIPT = ROOT / "scripts" / "train_builtin_models.py"


def training_settings():
    """The built-in models' names, architectures, configs, window, spacing and classes as
    ``scripts/train_builtin_models.py`` defines them (its module-level constants)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_builtin_models", TRAINING_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # defines constants only; training runs under __main__
    return script


# ------------------------------------------------------------------------------ inputs


def synthesise_ct(path: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """A CT-like phantom in HU written as gzipped int16 NIfTI (axes i, j, k = R-L, A-P, I-S).

    An elliptic body cylinder (semi-axes 170 x 115 mm) through the whole volume: a 12 mm fat
    rim (-100 HU) around soft tissue (40 HU); two lungs (-850 HU) in the upper 60 % of the
    slices; a spine (700 HU) behind; Gaussian noise of 15 HU; air at -1000 HU around it.
    """
    import nibabel as nib

    spacing = (0.8, 0.8, 1.5)
    rng = np.random.default_rng(seed)
    x = (np.arange(shape[0]) - shape[0] / 2) * spacing[0]
    y = (np.arange(shape[1]) - shape[1] / 2) * spacing[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    body = (xx / 170) ** 2 + (yy / 115) ** 2
    lungs = (((np.abs(xx) - 75) / 55) ** 2 + ((yy + 10) / 70) ** 2) < 1
    spine = ((xx / 20) ** 2 + ((yy - 75) / 20) ** 2) < 1
    base = np.full(shape[:2], -1000.0, np.float32)
    base[body < 1] = -100
    base[(xx / 158) ** 2 + (yy / 103) ** 2 < 1] = 40
    base[spine] = 700
    data = np.empty(shape, np.int16)
    for k in range(shape[2]):
        plane = base.copy()
        if k >= 0.4 * shape[2]:
            plane[lungs & (body < 1)] = -850
        plane += rng.normal(0, 15, shape[:2]).astype(np.float32)
        data[..., k] = np.clip(np.round(plane), -1024, 3071)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # RAS: the DICOM LPS grid
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) / 2)
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = b"CT phantom (bench_segment.py)"
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, path)
    return path


def prepare_models(names: list[str] | None, folder: Path) -> tuple[list[Path], str]:
    """Model folders to run: the installed built-ins, else untrained stand-ins saved here
    with the architectures, configs and cards of the training script."""
    import torch

    from napari_medattn.models import create
    from napari_medattn.models.card import ModelCard
    from napari_medattn.models.registry import builtin_models, save_model

    script = training_settings()
    names = names or list(script.MODELS)
    installed = {e.name: e.path for e in builtin_models()}
    folders = []
    if all(name in installed for name in names):
        for name in names:
            # A copy, so that weights re-installed during the run cannot mix versions.
            shutil.copytree(installed[name], folder / name, dirs_exist_ok=True)
            folders.append(folder / name)
        return folders, "built-in (trained), copied from the package"
    for name in names:
        architecture, config = script.MODELS[name]
        torch.manual_seed(0)
        net = create(architecture, in_channels=1, out_channels=len(script.CLASSES), **config)
        card = ModelCard(name=name, architecture=architecture, config=net.config,
                         classes=script.CLASSES, patch_size=script.PATCH,
                         spacing=script.SPACING_MM, orientation="RAS", modality="MR",
                         normalization={"scheme": "zscore"}, license="BSD-3-Clause",
                         training_data="none: an untrained stand-in for benchmarking")
        folders.append(save_model(net, card, folder / name))
    return folders, "untrained stand-ins (built-in weights not installed yet)"


# ------------------------------------------------------------------------------ children


def run_ours(model: str, image: str, out: str, overlap: float, batch: int,
             autocast: str, crop: bool = False) -> tuple[float, float]:
    """``medattn segment`` on one file; returns the wall and CPU seconds from reading to
    written."""
    # The command imports its modules lazily (to keep ``medattn --help`` fast); they are
    # imported here before the timer, as the MONAI side imports its modules before its own.
    import napari_medattn.inference.pipeline  # noqa: F401
    import napari_medattn.io  # noqa: F401
    import napari_medattn.metrics.report  # noqa: F401
    import tqdm  # noqa: F401
    from napari_medattn.cli import main
    from napari_medattn.models.registry import load_model

    load_model(model)  # the model is loaded before the timer on the MONAI side too
    start, cpu_start = time.perf_counter(), time.process_time()
    code = main(["segment", image, "--out", out, "--model", model, "--device", "cpu",
                 "--autocast", autocast, "--overlap", str(overlap), "--batch-size",
                 str(batch)] + (["--crop-to-body"] if crop else []))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if code != 0:
        raise SystemExit(f"medattn segment failed with exit code {code}")
    return seconds, cpu


def run_monai(model: str, image: str, out: str, overlap: float,
              batch: int) -> tuple[float, float]:
    """The MONAI pipeline on one file; returns the wall and CPU seconds from reading to
    written."""
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import LoadImage, Orientation, ResampleToMatch, Spacing

    from napari_medattn.inference.preprocess import normalize_intensity
    from napari_medattn.models.registry import load_model

    module, card = load_model(model)
    start, cpu_start = time.perf_counter(), time.process_time()
    source = LoadImage(image_only=True, ensure_channel_first=True)(image)
    work = source
    if card.orientation:
        work = Orientation(axcodes=card.orientation)(work)
    if card.spacing:
        work = Spacing(pixdim=card.spacing, mode="bilinear")(work)
    normalised = normalize_intensity(work[0].numpy(), card.normalization)
    with torch.inference_mode():
        probabilities = sliding_window_inference(
            torch.from_numpy(normalised)[None, None], card.patch_size, batch,
            lambda x: torch.softmax(module(x), dim=1), overlap=overlap, mode="gaussian",
            sigma_scale=0.125)
        labels = probabilities.argmax(dim=1).to(torch.uint8)
    del probabilities
    labels = work.clone().set_array(labels) if hasattr(work, "set_array") else labels
    labels = ResampleToMatch(mode="nearest")(labels, img_dst=source)
    array = np.asarray(labels[0]).astype(np.uint8)
    affine = np.asarray(source.meta["original_affine"] if "original_affine" in source.meta
                        else source.affine)
    name = Path(image).name.split(".")[0]
    nib.save(nib.Nifti1Image(array, affine), Path(out) / f"{name}_labels.nii.gz")
    return time.perf_counter() - start, time.process_time() - cpu_start


def child(args: argparse.Namespace) -> None:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child == "monai":
        seconds, cpu = run_monai(args.model, args.input, args.out, args.overlap, args.batch_size)
    else:
        seconds, cpu = run_ours(args.model, args.input, args.out, args.overlap, args.batch_size,
                                "auto" if args.child == "ours" else "off",
                                crop=args.child == "ours-crop")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print("RESULT " + json.dumps({"seconds": seconds, "cpu_seconds": cpu,
                                  "peak_bytes": peak}))


def spawn(kind: str, model: Path, image: Path, out: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--model", str(model), "--input",
               str(image), "--out", str(out), "--overlap", str(args.overlap),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------ parent


def agreement(ours: Path, monai: Path) -> tuple[dict[int, float], float]:
    """Dice of each foreground class present in either label map, and the fraction of
    voxels given the same label (the maps must be on the same grid)."""
    from napari_medattn.io import read_volume
    from napari_medattn.metrics import evaluate_pair

    a, b = read_volume(ours), read_volume(monai)
    if not np.allclose(a.affine, b.affine, atol=1e-4) or a.spatial_shape != b.spatial_shape:
        raise SystemExit(f"The label maps are on different grids: {ours}, {monai}.")
    first, second = np.asarray(a.data), np.asarray(b.data)
    scores = evaluate_pair(first, second, spacing=a.spacing)
    return {s.label: s.dice for s in scores}, float(np.mean(first == second))


def same_label_inside_body(first: Path, second: Path, image: Path) -> float:
    """Fraction of the body's voxels (above :func:`body_threshold` of the scan: -500 HU for
    CT, Otsu's threshold for MR) that get the same label in two label maps of that scan."""
    from napari_medattn.inference.preprocess import body_threshold
    from napari_medattn.io import read_volume

    scan = read_volume(image)
    data = np.asarray(scan.data)
    body = data > body_threshold(data, scan.modality)
    a, b = np.asarray(read_volume(first).data), np.asarray(read_volume(second).data)
    return float(np.mean(a[body] == b[body]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_segment_work"))
    parser.add_argument("--models", nargs="+",
                        help="built-in model names (default: those of the training script)")
    parser.add_argument("--volumes", nargs="+", choices=("mni", "ct"), default=["mni", "ct"])
    parser.add_argument("--ct-shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--overlap", type=float, default=0.25,
                        help="window overlap for both sides (default: 0.25, MONAI's default)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in every run (default 0: torch's default)")
    parser.add_argument("--crop", action="store_true",
                        help="also run ours with --crop-to-body (float32)")
    parser.add_argument("--child", choices=("ours", "ours-float32", "ours-crop", "monai"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    models, origin = prepare_models(args.models, work / "models")
    inputs = {}
    if "mni" in args.volumes:
        inputs["mni"] = MNI
    if "ct" in args.volumes:
        shape = tuple(args.ct_shape)
        ct = work / f"ct_{'x'.join(map(str, shape))}.nii.gz"
        if not ct.exists():
            started = time.perf_counter()
            synthesise_ct(ct, shape)
            print(f"synthesised {ct.name} in {time.perf_counter() - started:.1f} s")
        inputs["ct"] = ct
    from napari_medattn.models.registry import WEIGHTS_FILE, weights_sha256

    hashes = ", ".join(f"{m.name} {weights_sha256(m / WEIGHTS_FILE)[:12]}" for m in models)
    print(f"models: {origin}: {hashes}; overlap {args.overlap}, "
          f"batch {args.batch_size}, Gaussian sigma 0.125, "
          f"{os.cpu_count()} CPUs, torch threads {args.threads or 'default'}, "
          f"load average {os.getloadavg()[0]:.1f}")

    figures = []
    for model in models:
        for key, image in inputs.items():
            kinds = ["monai", "ours", "ours-float32"] + (["ours-crop"] if args.crop else [])
            runs: dict[str, list[dict]] = {k: [] for k in kinds}
            for repeat in range(args.repeats):
                for kind in kinds:
                    out = work / "out" / model.name / key / kind
                    runs[kind].append(spawn(kind, model, image, out, args))
                    print(f"  {model.name} {key} {kind:9s} {runs[kind][-1]['seconds']:8.2f} s  "
                          f"CPU {runs[kind][-1]['cpu_seconds']:8.2f} s  "
                          f"peak {runs[kind][-1]['peak_bytes'] / 2**30:.2f} GiB  "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
            stem = image.name.split(".")[0]
            folder = work / "out" / model.name / key
            labels = {kind: folder / kind / f"{stem}_labels.nii.gz" for kind in kinds}
            precision = json.loads((folder / "ours" / f"{stem}_provenance.json")
                                   .read_text())["precision"]
            monai_s = statistics.median(r["seconds"] for r in runs["monai"])
            monai_cpu = statistics.median(r["cpu_seconds"] for r in runs["monai"])
            tag = f"{model.name}_{key}"
            figures += [f"FIGURE segment_{tag}_monai_s {monai_s:.2f} s",
                        f"FIGURE segment_{tag}_peak_rss_monai "
                        f"{max(r['peak_bytes'] for r in runs['monai']) / 1e9:.2f} GB"]
            print(f"  ours ran in {precision} (--autocast auto)")
            for kind, name in (("ours", f"ours_{precision}"), ("ours-float32", "ours_float32")):
                if kind == "ours-float32" and precision == "float32":
                    continue  # the same configuration twice
                seconds = statistics.median(r["seconds"] for r in runs[kind])
                cpu = statistics.median(r["cpu_seconds"] for r in runs[kind])
                dice, same = agreement(labels[kind], labels["monai"])
                figures += [
                    f"FIGURE segment_{tag}_{name}_s {seconds:.2f} s",
                    f"FIGURE segment_{tag}_time_{name}_over_monai {seconds / monai_s:.3f} ratio",
                    f"FIGURE segment_{tag}_cpu_{name}_over_monai {cpu / monai_cpu:.3f} ratio",
                    f"FIGURE segment_{tag}_peak_rss_{name} "
                    f"{max(r['peak_bytes'] for r in runs[kind]) / 1e9:.2f} GB",
                    f"FIGURE segment_{tag}_dice_{name}_vs_monai_mean "
                    f"{np.mean(list(dice.values())):.4f} ratio",
                    f"FIGURE segment_{tag}_voxels_same_label_{name}_vs_monai {same:.4f} ratio",
                ]
                print(f"  agreement {kind} vs MONAI: Dice "
                      + ", ".join(f"class {c} {d:.4f}" for c, d in dice.items())
                      + f"; same label in {same:.2%} of the voxels")
            if precision != "float32":
                dice, same = agreement(labels["ours"], labels["ours-float32"])
                figures.append(f"FIGURE segment_{tag}_voxels_same_label_{precision}_vs_float32 "
                               f"{same:.4f} ratio")
                print(f"  agreement ours ({precision}) vs ours-float32: Dice "
                      + ", ".join(f"class {c} {d:.4f}" for c, d in dice.items())
                      + f"; same label in {same:.2%} of the voxels")
            if args.crop:
                crop_s = statistics.median(r["seconds"] for r in runs["ours-crop"])
                dice, same = agreement(folder / "ours-crop" / f"{stem}_labels.nii.gz",
                                       folder / "monai" / f"{stem}_labels.nii.gz")
                print("  agreement ours-crop vs MONAI: Dice "
                      + ", ".join(f"class {c} {d:.4f}" for c, d in dice.items())
                      + f"; same label in {same:.2%} of the voxels")
                dice_own, same_own = agreement(folder / "ours-crop" / f"{stem}_labels.nii.gz",
                                               folder / "ours-float32" / f"{stem}_labels.nii.gz")
                print("  agreement ours-crop vs ours-float32: Dice "
                      + ", ".join(f"class {c} {d:.4f}" for c, d in dice_own.items())
                      + f"; same label in {same_own:.2%} of the voxels")
                crop_cpu = statistics.median(r["cpu_seconds"] for r in runs["ours-crop"])
                inside = same_label_inside_body(folder / "ours-crop" / f"{stem}_labels.nii.gz",
                                                folder / "ours-float32" / f"{stem}_labels.nii.gz",
                                                image)
                print(f"  ours-crop vs ours-float32 inside the body: same label in {inside:.2%} of "
                      f"the body's voxels (outside the box the crop gives background)")
                figures += [
                    f"FIGURE segment_{tag}_crop_voxels_same_label_as_ours_in_body "
                    f"{inside:.4f} ratio",
                    f"FIGURE segment_{tag}_crop_time_ours_over_monai {crop_s / monai_s:.3f} ratio",
                    f"FIGURE segment_{tag}_crop_cpu_ours_over_monai "
                    f"{crop_cpu / monai_cpu:.3f} ratio",
                    f"FIGURE segment_{tag}_crop_peak_rss_ours "
                    f"{max(r['peak_bytes'] for r in runs['ours-crop']) / 1e9:.2f} GB",
                    f"FIGURE segment_{tag}_crop_dice_vs_monai_mean "
                    f"{np.mean(list(dice.values())):.4f} ratio",
                    f"FIGURE segment_{tag}_crop_voxels_same_label_as_ours {same_own:.4f} ratio",
                ]
    print("\n".join(figures))


if __name__ == "__main__":
    main()
