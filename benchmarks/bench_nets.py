"""Every net at one 3D input: parameters, FLOPs, CPU latency and peak memory, with MONAI's
AttentionUnet, UNETR and SwinUNETR measured in the same run as reference rows.

Run from the repository root::

    .venv/bin/python benchmarks/bench_nets.py            # 96^3, writes docs/benchmarks/nets.md

Method
------
* Each case runs in a fresh subprocess (``--case NAME``), so one model's memory cannot hide
  in another's numbers and every case starts from the same allocator state.
* Parameters: :func:`napari_medattn.models.count_parameters`.
* FLOPs: :func:`napari_medattn.models.count_flops` (``torch.utils.flop_counter``; matrix
  products, convolutions and scaled-dot-product attention, 2 FLOPs per multiply-accumulate).
  The same counter is applied to the MONAI models.
* Latency: batch 1, single channel, eval mode, ``torch.no_grad``, ``--threads`` intra-op
  threads; one warm-up pass (the FLOP-counting one), then the median of ``--repeats`` timed
  passes (wall clock).
* Peak memory: ``ru_maxrss`` of the subprocess after the passes minus ``ru_maxrss`` just
  before the first pass (model built, input allocated), i.e. the extra resident memory an
  inference pass needs (activations and workspaces), not the weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

UNET_ATTENTIONS = ("none", "se", "eca", "cbam", "scse", "gate", "window", "dssa", "global")

# key -> (row label, how it is built)
CASES: dict[str, tuple[str, str]] = {
    **{f"unet_{a}": (f"U-Net, attention={a}", f"create('unet', attention='{a}')")
       for a in UNET_ATTENTIONS},
    "dssa_unet": ("DSSA-UNet (default)", "create('dssa_unet')"),
    "medformer": ("MedFormer segmentation (default)", "create('medformer')"),
    "unetr": ("UNETR (default)", "create('unetr')"),
    "unetr_paper": ("UNETR (paper preset)", "create('unetr', preset='paper')"),
    "monai_attention_unet": ("MONAI AttentionUnet",
                             "AttentionUnet(3, 1, 2, channels=(16, 32, 64, 128, 256), "
                             "strides=(2, 2, 2, 2))"),
    "monai_unetr": ("MONAI UNETR", "UNETR(1, 2, img_size=96) (hidden 768, 12 layers, 12 heads, "
                    "feature_size 16)"),
    "monai_swinunetr": ("MONAI SwinUNETR", "SwinUNETR(1, 2, feature_size=24)"),
}


CROSS_CHECK = "## Cross-check"


def build(key: str, size: int):
    """The model of case ``key`` (eval mode) for a ``size``^3 input."""
    if key.startswith("monai_"):
        from monai.networks.nets import UNETR, AttentionUnet, SwinUNETR

        if key == "monai_attention_unet":
            model = AttentionUnet(3, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))
        elif key == "monai_unetr":
            model = UNETR(1, 2, img_size=size)
        else:
            model = SwinUNETR(1, 2, feature_size=24)
        return model.eval()
    from napari_medattn.models import create

    if key.startswith("unet_"):
        return create("unet", attention=key[len("unet_"):]).eval()
    if key == "unetr_paper":
        return create("unetr", preset="paper", img_size=size).eval()
    if key == "unetr":
        return create("unetr", img_size=size).eval()
    return create(key).eval()


def run_case(key: str, size: int, repeats: int, threads: int) -> dict:
    """Measure one case in this process (called in a fresh subprocess)."""
    import gc

    import torch

    from napari_medattn.models import count_flops, count_parameters

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(key, size)
    shape = (1, 1, size, size, size)
    x = torch.randn(shape)
    gc.collect()
    # Everything up to here (imports, weights, input) is the baseline.
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # The FLOP-counting pass doubles as the warm-up (allocator, oneDNN primitive caches).
    flops = count_flops(model, shape)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"key": key, "params": count_parameters(model), "flops": flops,
            "latency_s": statistics.median(times), "best_s": min(times), "times_s": times,
            "peak_mib": (peak_kib - before_kib) / 1024}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, no GPU used, {platform.system()} {platform.release()}"


def write_markdown(path: Path, rows: list[dict], args, command: str, total_s: float,
                   ratios: dict[str, float]) -> None:
    import monai
    import torch

    base = next(r for r in rows if r["key"] == "unet_none")
    lines = [
        "# Networks at a 96^3 input: size, cost, CPU latency, memory",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; torch {torch.__version__}, MONAI {monai.__version__}, "
        f"{args.threads} intra-op threads  ",
        f"Date: {datetime.date.today().isoformat()}; whole run {total_s:.0f} s  ",
        f"Input: 1 x 1 x {args.size}^3 (batch, channel, voxels); latency is the median of "
        f"{args.repeats} passes after a warm-up, eval mode, `torch.no_grad`.",
        "",
        "| model | built as | params (M) | GFLOPs | latency median (s) | best (s) "
        "| best / plain U-Net best | peak memory (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label, recipe = CASES[r["key"]]
        lines.append(f"| {label} | `{recipe}` | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.1f} "
                     f"| {r['latency_s']:.2f} | {r['best_s']:.2f} "
                     f"| {r['best_s'] / base['best_s']:.2f} "
                     f"| {r['peak_mib']:.0f} |")
    lines += [
        "",
        "Ratios measured side by side in this run (latency ratios use the best pass of each, "
        "which other jobs on the machine disturb least):",
        "",
        *[f"- {name}: {value:.3f}" for name, value in ratios.items()],
        "",
        "## How it is measured",
        "",
        "- Every row runs in a fresh Python subprocess (`--case KEY`).",
        "- FLOPs: `torch.utils.flop_counter.FlopCounterMode` through "
        "`napari_medattn.models.count_flops`: matrix products, convolutions (incl. "
        "transposed, grouped, depth-wise) and scaled-dot-product attention (the CPU kernel "
        "added with PyTorch's own formula), 2 FLOPs per multiply-accumulate. Norms, "
        "activations, softmax, pooling, interpolation and element-wise gates are not "
        "counted. The same counter runs on the MONAI models.",
        "- Peak memory: `ru_maxrss` after the passes minus `ru_maxrss` just before the first "
        "pass (model and input already allocated): the extra resident memory of an "
        "inference pass (activations, workspaces), without the weights.",
        "- U-Net family: one skeleton (channels 16/32/64/128/256, instance norm, LeakyReLU, "
        "strided-conv down, transposed-conv up); rows differ only in the attention. "
        "window/dssa go after the conv blocks at 1/4, 1/8 and 1/16 (encoder and decoder), "
        "global is two transformer blocks at the 1/16 bottleneck, gate is on every skip.",
        "- MONAI reference rows: AttentionUnet with the same channels and strides as our U-Net "
        "(it uses batch norm and ReLU, 3x3x3 up-convolutions and one 3x3x3 convolution per "
        "decoder level where ours has two as nnU-Net, hence its 18% fewer FLOPs); UNETR "
        "at the paper's size, which our `unetr` paper preset reproduces (same FLOPs); "
        "SwinUNETR with feature_size 24 (the smallest common size; 48 costs about 4x the "
        "FLOPs).",
        "- On a shared machine rows run minutes apart under different load, so latencies, "
        "and even latency ratios between rows, can be off by a factor of several; a quiet "
        "machine (or the cross-check section below, where present) gives usable latencies. "
        "Parameter and FLOP counts are exact; peak memory moves by a few percent only.",
        "",
    ]
    # A hand-written "## Cross-check" section (runs on other machines) survives a rerun.
    kept = ""
    if path.exists():
        previous = path.read_text()
        if CROSS_CHECK in previous:
            kept = previous[previous.index(CROSS_CHECK):]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="input edge length (voxels)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES),
                        help="cases to run (default: all)")
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "nets.md")
    args = parser.parse_args(argv)

    if args.case:  # child: measure one case, print one JSON line
        print(json.dumps(run_case(args.case, args.size, args.repeats, args.threads)))
        return 0

    command = "python benchmarks/bench_nets.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    start = time.perf_counter()
    rows = []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for key in args.cases:
        result = subprocess.run(
            [sys.executable, __file__, "--case", key, "--size", str(args.size),
             "--repeats", str(args.repeats), "--threads", str(args.threads)],
            capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            raise SystemExit(f"case {key} failed")
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{key:22s} {row['params'] / 1e6:7.2f} M {row['flops'] / 1e9:7.1f} GFLOP "
              f"{row['latency_s']:6.2f} s (best {row['best_s']:.2f}) {row['peak_mib']:7.0f} MiB", flush=True)
    total = time.perf_counter() - start

    by_key = {r["key"]: r for r in rows}
    ratios: dict[str, float] = {}

    def ratio(name: str, a: str, b: str, field: str) -> None:
        if a in by_key and b in by_key:
            ratios[name] = by_key[a][field] / by_key[b][field]

    ratio("nets_unet_gate_vs_monai_attention_unet_latency", "unet_gate",
          "monai_attention_unet", "best_s")
    ratio("nets_unet_gate_vs_monai_attention_unet_flops", "unet_gate",
          "monai_attention_unet", "flops")
    ratio("nets_unetr_paper_vs_monai_unetr_flops", "unetr_paper", "monai_unetr", "flops")
    ratio("nets_unetr_paper_vs_monai_unetr_params", "unetr_paper", "monai_unetr", "params")
    ratio("nets_unetr_paper_vs_monai_unetr_latency", "unetr_paper", "monai_unetr", "best_s")
    ratio("nets_dssa_unet_vs_monai_swinunetr_latency", "dssa_unet", "monai_swinunetr",
          "best_s")
    ratio("nets_dssa_unet_vs_monai_swinunetr_flops", "dssa_unet", "monai_swinunetr", "flops")
    ratio("nets_unet_dssa_vs_unet_window_latency", "unet_dssa", "unet_window", "best_s")
    ratio("nets_unet_dssa_vs_unet_window_peak_memory", "unet_dssa", "unet_window", "peak_mib")

    if set(args.cases) == set(CASES) and args.size == 96:
        write_markdown(args.output, rows, args, command, total, ratios)
        print(f"wrote {args.output}")
    for r in rows:
        k = r["key"]
        print(f"FIGURE nets_{k}_params {r['params'] / 1e6:.3f} Mparams")
        print(f"FIGURE nets_{k}_flops {r['flops'] / 1e9:.2f} GFLOP")
        print(f"FIGURE nets_{k}_latency {r['latency_s']:.3f} s")
        print(f"FIGURE nets_{k}_latency_best {r['best_s']:.3f} s")
        print(f"FIGURE nets_{k}_peak_memory {r['peak_mib']:.0f} MiB")
    for name, value in ratios.items():
        print(f"FIGURE {name} {value:.3f} ratio")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
