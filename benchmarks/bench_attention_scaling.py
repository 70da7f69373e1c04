"""Time and peak memory of global, window and DSSA attention over 3D token grids.

Compares, with the same channels and heads, one forward pass (inference, ``torch.no_grad``)
of:

* ``global_sdpa``     -- :class:`MultiHeadSelfAttention` (torch's
  ``scaled_dot_product_attention``; on CPU and CUDA this may run a fused flash kernel that
  never forms the N x N matrix);
* ``global_explicit`` -- the same projections with the attention matrix written out,
  ``softmax(Q K^T / sqrt(d)) V``, one head at a time with an in-place softmax, so its peak
  is one head's N x N float32 matrix: the least any implementation that forms the matrix
  needs (the textbook "global attention" the DSSA papers compare against);
* ``window``          -- :class:`WindowAttention` (Swin, non-shifted, ``--window`` per axis);
* ``dssa``            -- :class:`DualSparseSelectionAttention` (``--n-win`` regions per axis,
  ``--topk`` regions, ``--token-keep`` of the gathered keys).

Every case runs in a fresh subprocess, so allocator state and caches of one case cannot
flatter another. Peak memory is the extra memory of one forward pass, output included:

* CPU: the process's resident-set high-water mark (``VmHWM``), reset through
  ``/proc/self/clear_refs`` right before the pass, minus the resident set just before it.
  This sees every page torch touches, unlike ``tracemalloc`` (Python allocations only).
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the pass.

Cases whose estimated peak exceeds ``--max-gb`` are skipped and reported as such.

Run (CPU, this repository's root)::

    .venv/bin/python benchmarks/bench_attention_scaling.py
    .venv/bin/python benchmarks/bench_attention_scaling.py --device cuda --max-gb 70 \
        --out-dir docs/benchmarks/cuda

It writes ``attention_scaling.csv`` and ``attention_scaling.png`` to ``--out-dir`` and ends
with ``FIGURE`` lines: the DSSA/global peak-memory ratios and the DSSA/window time ratio at
``--ref-size`` tokens per axis (timed side by side, alternating, in one process), and the
log-log growth exponents of DSSA's memory and time.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("global_sdpa", "global_explicit", "window", "dssa")
ROOT = Path(__file__).resolve().parents[1]


def build(method: str, args: argparse.Namespace):
    """The attention module of ``method`` and a forward function for it."""
    import torch

    from napari_medattn.models.blocks import (
        DualSparseSelectionAttention,
        MultiHeadSelfAttention,
        WindowAttention,
    )
    from napari_medattn.models.blocks.common import flatten_tokens, unflatten_tokens

    if method == "dssa":
        module = DualSparseSelectionAttention(3, args.channels, num_heads=args.heads,
                                              n_win=args.n_win, topk=args.topk,
                                              token_keep=args.token_keep,
                                              max_chunk_bytes=args.dssa_chunk_mib * 2 ** 20)
        return module, module
    if method == "window":
        module = WindowAttention(3, args.channels, args.heads, window_size=args.window)
        return module, module
    module = MultiHeadSelfAttention(3, args.channels, num_heads=args.heads)
    if method == "global_sdpa":
        return module, module

    def explicit(x: torch.Tensor) -> torch.Tensor:
        grid = x.shape[2:]
        tokens = flatten_tokens(x)
        b, n, c = tokens.shape
        qkv = module.qkv(tokens).reshape(b, n, 3, module.num_heads, module.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        heads = []
        for h in range(module.num_heads):
            scores = (q[:, h] * module.scale) @ k[:, h].transpose(-2, -1)  # (B, N, N)
            scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
            scores.div_(scores.sum(dim=-1, keepdim=True))
            heads.append(scores @ v[:, h])
            del scores
        out = torch.stack(heads, dim=1).transpose(1, 2).reshape(b, n, c)
        return unflatten_tokens(module.proj(out), grid)

    return module, explicit


def estimated_bytes(method: str, size: int, args: argparse.Namespace) -> float:
    """A conservative estimate of one pass's peak (bytes), used only to skip cases."""
    n = size ** 3
    linear = 12 * n * args.channels * 4  # input, QKV, copies, output
    if method == "global_explicit":
        return linear + 1.1 * n * n * 4  # one head's N x N float32 matrix
    return linear  # the others are linear in N (chunked DSSA, windows, fused SDPA)


def _rss_kib() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    return hwm, rss


def prepare(method: str, args: argparse.Namespace):
    """Seed, thread count and device for this process; the method's forward function there."""
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    module, forward = build(method, args)
    module.to(device).eval()
    return forward, device


def timed(forward, x, device) -> tuple[float, object]:
    """Seconds of one pass (the GPU's queue drained before and after), and its output."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    y = forward(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, y


def run_case(method: str, size: int, args: argparse.Namespace) -> dict:
    """One case, in this (fresh) process: peak memory of one pass, then its median time."""
    import gc

    import torch

    forward, device = prepare(method, args)
    with torch.no_grad():
        # Warm up kernels, thread pools and lazy initialisation on a tiny grid: a larger one
        # would leave freed pages in the heap that the measured pass reuses unseen.
        timed(forward, torch.randn(1, args.channels, 4, 4, 4, device=device), device)
        x = torch.randn(1, args.channels, size, size, size, device=device)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            base = _rss_kib()[1] * 1024
        first, y = timed(forward, x, device)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = _rss_kib()[0] * 1024 - base
        del y
        times: list[float] = []
        spent = first
        while len(times) < args.max_repeats and spent + (statistics.median(times) if times
                                                         else first) < args.time_budget:
            times.append(timed(forward, x, device)[0])
            spent += times[-1]
    return {"time_s": statistics.median(times) if times else first,
            "repeats": max(1, len(times)), "peak_bytes": peak}


def run_pair(size: int, args: argparse.Namespace) -> dict:
    """DSSA and window attention timed alternately in one process, for a load-robust ratio.

    Other work on a shared machine slows both sides of each round alike, so the ratio of the
    medians is steadier than the ratio of two cases run minutes apart.
    """
    import torch

    forwards = {}
    for method in ("dssa", "window"):
        forwards[method], device = prepare(method, args)
    times: dict[str, list[float]] = {"dssa": [], "window": []}
    with torch.no_grad():
        x = torch.randn(1, args.channels, size, size, size, device=device)
        for forward in forwards.values():
            timed(forward, x, device)  # warm-up at full size
        for _ in range(args.pair_rounds):
            for method, forward in forwards.items():
                times[method].append(timed(forward, x, device)[0])
    return {"dssa_s": statistics.median(times["dssa"]),
            "window_s": statistics.median(times["window"]), "rounds": args.pair_rounds}


def machine(args: argparse.Namespace) -> str:
    import torch

    if args.device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    threads = args.threads or torch.get_num_threads()
    return (f"{model.group(1) if model else cpu}, {os.cpu_count()} cores, {threads} torch "
            f"threads (torch {torch.__version__})")


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx = [math.log(v) for v in xs]
    ly = [math.log(v) for v in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return (sum((a - mx) * (b - my) for a, b in zip(lx, ly))
            / sum((a - mx) ** 2 for a in lx))


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in METHODS:
        done = [r for r in rows if r["method"] == method and r["status"] == "ok"]
        if not done:
            continue
        n = [r["tokens"] for r in done]
        axes[0].loglog(n, [r["time_s"] for r in done], "o-", label=method)
        axes[1].loglog(n, [r["peak_mib"] for r in done], "o-", label=method)
    for ax, ylabel in zip(axes, ("forward time (s)", "peak extra memory (MiB)")):
        ax.set_xlabel("tokens N (3D grid, 8^3 ... 48^3)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 24, 32, 40, 48],
                        help="tokens per axis of the cubic grids")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--window", type=int, default=8, help="window attention size per axis")
    parser.add_argument("--n-win", type=int, default=8, help="DSSA regions per axis")
    parser.add_argument("--topk", type=int, default=4, help="DSSA regions kept per region")
    parser.add_argument("--token-keep", type=float, default=1 / 8,
                        help="DSSA fraction of gathered keys kept per token")
    parser.add_argument("--dssa-chunk-mib", type=int, default=64,
                        help="DSSA working memory per chunk of query regions (MiB)")
    parser.add_argument("--max-gb", type=float, default=12.0,
                        help="skip cases whose estimated peak exceeds this (GB)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--time-budget", type=float, default=4.0,
                        help="seconds of timed repeats per case (at least one run)")
    parser.add_argument("--max-repeats", type=int, default=5)
    parser.add_argument("--ref-size", type=int, default=32,
                        help="tokens per axis at which the ratios are reported")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--pair-rounds", type=int, default=7,
                        help="alternating DSSA/window rounds for the time ratio")
    parser.add_argument("--case", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--pair", type=int, metavar="SIZE", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args)))
        return
    if args.pair:
        print(json.dumps(run_pair(args.pair, args)))
        return

    passthrough = [f"--device={args.device}", f"--channels={args.channels}",
                   f"--heads={args.heads}", f"--window={args.window}", f"--n-win={args.n_win}",
                   f"--topk={args.topk}", f"--token-keep={args.token_keep}",
                   f"--dssa-chunk-mib={args.dssa_chunk_mib}",
                   f"--threads={args.threads}", f"--time-budget={args.time_budget}",
                   f"--max-repeats={args.max_repeats}", f"--pair-rounds={args.pair_rounds}"]
    rows = []
    for size in args.sizes:
        for method in args.methods:
            row = {"method": method, "tokens_per_axis": size, "tokens": size ** 3,
                   "status": "ok", "time_s": "", "peak_mib": "", "repeats": ""}
            estimate = estimated_bytes(method, size, args)
            if estimate > args.max_gb * 1e9:
                row["status"] = f"skipped: needs ~{estimate / 1e9:.1f} GB > {args.max_gb:g} GB"
            else:
                proc = subprocess.run(
                    [sys.executable, __file__, "--case", method, str(size), *passthrough],
                    capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                    row["status"] = f"failed: {reason[:300]}"
                else:
                    result = json.loads(proc.stdout.strip().splitlines()[-1])
                    row.update(time_s=result["time_s"], repeats=result["repeats"],
                               peak_mib=result["peak_bytes"] / 2 ** 20)
            rows.append(row)
            shown = (f"{row['time_s']:.4f} s  {row['peak_mib']:.1f} MiB  x{row['repeats']}"
                     if row["status"] == "ok" else row["status"])
            print(f"{method:16s} {size:3d}^3  {shown}", flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = args.out_dir / "attention_scaling.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    where = machine(args)
    title = (f"C={args.channels}, {args.heads} heads; window {args.window}^3; DSSA n_win "
             f"{args.n_win}, topk {args.topk}, token_keep {args.token_keep:g}; {where}")
    plot(rows, args.out_dir / "attention_scaling.png", title)
    print(f"machine: {where}")
    print(f"wrote {csv_path} and {args.out_dir / 'attention_scaling.png'}")

    def value(method: str, size: int, key: str) -> float | None:
        for r in rows:
            if r["method"] == method and r["tokens_per_axis"] == size and r["status"] == "ok":
                return float(r[key])
        return None

    ref = args.ref_size
    dssa_mem = value("dssa", ref, "peak_mib")
    for peer in ("global_explicit", "global_sdpa"):
        peer_mem = value(peer, ref, "peak_mib")
        if dssa_mem is not None and peer_mem:
            print(f"FIGURE dssa_over_{peer}_peak_memory_at_{ref}cubed "
                  f"{dssa_mem / peer_mem:.4f} ratio")
    dssa_time, window_time = value("dssa", ref, "time_s"), value("window", ref, "time_s")
    if dssa_time is not None and window_time:
        print(f"separate cases at {ref}^3: DSSA {dssa_time:.3f} s, window {window_time:.3f} s, "
              f"ratio {dssa_time / window_time:.3f}")
    proc = subprocess.run([sys.executable, __file__, "--pair", str(ref), *passthrough],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode == 0:
        pair = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"side by side at {ref}^3 ({pair['rounds']} alternating rounds): DSSA "
              f"{pair['dssa_s']:.3f} s, window {pair['window_s']:.3f} s (medians)")
        print(f"FIGURE dssa_over_window_time_at_{ref}cubed "
              f"{pair['dssa_s'] / pair['window_s']:.3f} ratio")
    else:
        print(f"side-by-side timing failed: {proc.stderr.strip().splitlines()[-1:]}")
    done = [r for r in rows if r["method"] == "dssa" and r["status"] == "ok"]
    if len(done) >= 2:
        tokens = [r["tokens"] for r in done]
        print(f"FIGURE dssa_memory_growth_exponent "
              f"{loglog_slope(tokens, [r['peak_mib'] for r in done]):.3f} power_of_N")
        print(f"FIGURE dssa_time_growth_exponent "
              f"{loglog_slope(tokens, [r['time_s'] for r in done]):.3f} power_of_N")


if __name__ == "__main__":
    main()
