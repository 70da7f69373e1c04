"""Cohort throughput on Dask: ``cohort.run`` with 1 and 2 workers against a plain serial loop
of the same work, in one run.

The work: ``segment`` with the built-in default model on the CPU over ``--cases`` small MR
scans (parts of nibabel's anatomical.nii, 2 mm, each cut and scaled differently; written
once into the work folder), outputs written as the command writes them.

* serial: one process, one torch thread, the model loaded once, then a ``for`` loop over the
  cases calling the same per-case step the cohort's workers call
  (``SegmentTask.run_case``: read, segment, write labels and provenance, the figures);
* cohort, N workers: ``napari_medattn.cohort.run`` on a LocalCluster of N single-thread
  worker processes it starts and closes (the wall time includes starting the cluster, each
  worker importing torch and loading the model, and writing the results table and plots).

The overhead is ``cohort 1 worker wall / serial wall - 1``; it is also given without the
cluster's start-up (measured on its own right before: start a LocalCluster, wait for its
workers, close it), and per case: the cases' own seconds on the worker (from their records,
the first one including the model load, as the serial loop's includes it) against the serial
loop's, which is what a longer cohort converges to. Throughput is cases per minute.
Runs alternate serial, 1 worker, 2 workers ``--repeats`` times; figures are medians. Ends
with ``FIGURE`` lines.

Usage: ``python benchmarks/bench_cohort.py [--cases 16] [--repeats 1] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ANATOMICAL = (Path(__file__).parents[1] / "src" / "napari_medattn" / "sample_data"
              / "nibabel_anatomical.nii.gz")


def make_cases(folder: Path, count: int) -> list[Path]:
    """``count`` scans cut from nibabel's anatomical.nii, each a different part and
    intensity scaling of the head (same content every run)."""
    import nibabel as nib

    source = nib.load(str(ANATOMICAL))
    data = np.asarray(source.dataobj, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        start = (index % 3, index % 2, index % 4)
        crop = data[start[0]:, start[1]:, start[2]:] * (1.0 + 0.05 * index)
        affine = source.affine.copy()
        affine[:3, 3] += affine[:3, :3] @ np.array(start)
        path = folder / f"case_{index:03d}.nii.gz"
        nib.save(nib.Nifti1Image(crop, affine), str(path))
        paths.append(path)
    return paths


def serial_loop(cases: list[Path], out: Path, options: list[str]) -> tuple[float, float]:
    """The same work as a plain loop in this process (one torch thread): wall seconds, twice
    (its cases' own seconds are the whole loop, model load included)."""
    import torch

    from napari_medattn.cohort import Case, make_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each single-thread worker gets
    try:
        started = time.perf_counter()
        task = make_task("segment", options)
        state = task.load()
        for path in cases:
            case_dir = out / path.name.removesuffix(".nii.gz")
            case_dir.mkdir(parents=True)
            task.run_case(state, Case(case_dir.name, (path,)), case_dir)
        elapsed = time.perf_counter() - started
        return elapsed, elapsed
    finally:
        torch.set_num_threads(threads)


def cohort_run(folder: Path, out: Path, options: list[str], workers: int
               ) -> tuple[float, float]:
    """Wall seconds of the whole run, and the sum of the cases' own seconds on the workers
    (each case's record: from the worker picking it up to its record written; the first
    case of each worker includes the model load)."""
    from napari_medattn.cohort import run

    started = time.perf_counter()
    result = run(folder, "segment", out, task_options=options, workers=workers,
                 torch_threads=1, progress=False,
                 cluster_options={"dashboard_address": ":0"})
    elapsed = time.perf_counter() - started
    if result.failed or result.ran != len(result.table):
        sys.exit(f"the cohort run failed: {result.table[['case', 'error']]}")
    return elapsed, float(result.table["runtime_s"].sum())


def cluster_startup(workers: int) -> float:
    from distributed import Client

    from napari_medattn.cohort import local_cluster

    started = time.perf_counter()
    with local_cluster(workers, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(workers)
        elapsed = time.perf_counter() - started
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    cases = make_cases(workdir / "scans", args.cases)
    options = ["--device", "cpu"]
    print(f"{args.cases} cases of {ANATOMICAL.name} parts, default model, CPU; "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    times: dict[str, list[float]] = {"serial": [], "cohort_1w": [], "cohort_2w": [],
                                     "startup_1w": []}
    case_seconds: dict[str, list[float]] = {"serial": [], "cohort_1w": [], "cohort_2w": []}
    for repeat in range(args.repeats):
        for name, function in (
                ("serial", lambda o: serial_loop(cases, o, options)),
                ("startup_1w", lambda o: cluster_startup(1)),
                ("cohort_1w", lambda o: cohort_run(workdir / "scans", o, options, 1)),
                ("cohort_2w", lambda o: cohort_run(workdir / "scans", o, options, 2))):
            out = workdir / f"out_{name}_{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            seconds = function(out)
            if isinstance(seconds, tuple):
                seconds, cases_s = seconds
                case_seconds[name].append(cases_s)
            times[name].append(seconds)
            print(f"repeat {repeat + 1}: {name:11s} {seconds:7.1f} s   "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    per_min = {name: 60 * args.cases / median[name] for name in ("serial", "cohort_1w",
                                                                 "cohort_2w")}
    overhead = median["cohort_1w"] / median["serial"] - 1
    steady = (median["cohort_1w"] - median["startup_1w"]) / median["serial"] - 1
    per_case = {name: statistics.median(v) / args.cases for name, v in case_seconds.items()}
    print(f"per case: serial {per_case['serial']:.2f} s, on the 1 worker "
          f"{per_case['cohort_1w']:.2f} s, on each of 2 workers {per_case['cohort_2w']:.2f} s")
    print(f"FIGURE cohort_1_worker_per_case_overhead "
          f"{100 * (per_case['cohort_1w'] / per_case['serial'] - 1):.1f} %")
    print(f"FIGURE serial_loop_throughput {per_min['serial']:.2f} cases/min")
    print(f"FIGURE cohort_1_worker_throughput {per_min['cohort_1w']:.2f} cases/min")
    print(f"FIGURE cohort_2_workers_throughput {per_min['cohort_2w']:.2f} cases/min")
    print(f"FIGURE cohort_1_worker_overhead {100 * overhead:.1f} %")
    print(f"FIGURE cohort_1_worker_overhead_without_cluster_start {100 * steady:.1f} %")
    print(f"FIGURE cluster_start_1_worker {median['startup_1w']:.1f} s")
    print(f"FIGURE cohort_2_workers_speedup {median['serial'] / median['cohort_2w']:.2f} ratio")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
