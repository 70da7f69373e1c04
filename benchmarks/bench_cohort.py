"""Cohort throughput on Dask: ``cohort.run`` with 1 and 2 workers against a plain serial loop
of the same work, in one run, with the cohort's fixed cost taken apart by phase.

The work: ``segment`` with the built-in default model on the CPU over ``--cases`` small MR
scans (parts of nibabel's anatomical.nii, 2 mm, each cut and scaled differently; written
once into the work folder), outputs written as the command writes them.

* serial: this process, one torch thread and one BLAS/OpenMP thread (threadpoolctl), the
  model loaded once, then a ``for`` loop over the cases calling the same per-case step the
  cohort's workers call (``SegmentTask.run_case``: read, segment, write labels and
  provenance, the figures);
* cohort, N workers: ``napari_medattn.cohort.run`` on a LocalCluster of N worker processes
  of one Dask thread, one torch thread and ``OMP/MKL/OPENBLAS_NUM_THREADS=1`` each, which it
  starts and closes (the wall time includes starting the cluster, each worker importing
  torch and the package and loading the model, and writing the results table and plots).

Like with like: both run one thread of numerical work per process; the serial loop runs
first in this process, so torch and the package are already imported for the cohort's
calling process (not for its workers). Printed per contender: wall seconds, cases per
minute and CPU seconds (this process plus its finished child processes, i.e. the workers);
per cohort run the phases of ``CohortResult.timings`` and, from the case records, each
worker's warm-up (imports and model load, on a thread of its own from the worker's start),
its first case, and the dispatch overhead (the cases' phase less the cases' own seconds
per worker). The overhead is ``cohort 1 worker wall /
serial wall - 1``. Runs alternate serial, 1 worker, 2 workers ``--repeats`` times; figures
are medians. Ends with ``FIGURE`` lines.

Usage: ``python benchmarks/bench_cohort.py [--cases 12] [--workers 1 2] [--repeats 1]
[--workdir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
        crop = data[start[0]:, start[1]:, start[2]:] * (1.0 + 0.05 * (index % 20))
        affine = source.affine.copy()
        affine[:3, 3] += affine[:3, :3] @ np.array(start)
        path = folder / f"case_{index:03d}.nii.gz"
        nib.save(nib.Nifti1Image(crop, affine), str(path))
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished (joined) child processes."""
    return sum(getattr(resource.getrusage(who), field)
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def serial_loop(cases: list[Path], out: Path, options: list[str]) -> dict:
    """The same work as a plain loop in this process, one thread of numerical work."""
    import torch
    from threadpoolctl import threadpool_limits

    from napari_medattn.cohort import Case, make_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each single-thread worker gets
    try:
        with threadpool_limits(1):  # as the workers' OMP/MKL/OPENBLAS_NUM_THREADS=1
            cpu, started = cpu_seconds(), time.perf_counter()
            task = make_task("segment", options)
            state = task.load()
            for path in cases:
                case_dir = out / path.name.removesuffix(".nii.gz")
                case_dir.mkdir(parents=True)
                task.run_case(state, Case(case_dir.name, (path,)), case_dir)
            return {"wall": time.perf_counter() - started, "cpu": cpu_seconds() - cpu}
    finally:
        torch.set_num_threads(threads)


def cohort_run(folder: Path, out: Path, options: list[str], workers: int) -> dict:
    """One cohort run: wall and CPU seconds, its phases, and from the case records the
    workers' set-up and the dispatch overhead."""
    from napari_medattn.cohort import run

    cpu, started = cpu_seconds(), time.perf_counter()
    result = run(folder, "segment", out, task_options=options, workers=workers,
                 torch_threads=1, progress=False,
                 cluster_options={"dashboard_address": ":0"})
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    if result.failed or result.ran != len(result.table):
        sys.exit(f"the cohort run failed: {result.table[['case', 'error']]}")
    records = [json.loads((out / folder / "case.json").read_text())
               for folder in result.table["folder"]]
    runtimes = [r["runtime_s"] for r in records]
    # Each worker's first case carries its warm-up (imports and model load, on their own
    # thread from the worker's start, overlapping the cluster's start and the plan).
    first = [r for r in records if "warm_up_s" in r["details"]]
    phases = dict(result.timings)
    phases["worker_first_case_s"] = statistics.mean(r["runtime_s"] for r in first)
    phases["worker_warm_up_s"] = statistics.mean(r["details"]["warm_up_s"] for r in first)
    phases["case_median_s"] = statistics.median(runtimes)
    phases["dispatch_s"] = result.timings["cases_s"] - sum(runtimes) / workers
    return {"wall": wall, "cpu": cpu, "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    cases = make_cases(workdir / "scans", args.cases)
    options = ["--device", "cpu"]
    print(f"{args.cases} cases of {ANATOMICAL.name} parts, default model, CPU "
          f"({len(os.sched_getaffinity(0))} cores); load average {os.getloadavg()[0]:.1f} at "
          f"the start. Serial: 1 process, torch 1 thread, BLAS/OpenMP 1 thread. Cohort: N "
          f"worker processes, each 1 Dask thread, torch 1 thread, OMP/MKL/OPENBLAS 1.")
    contenders = {"serial": lambda o: serial_loop(cases, o, options)}
    for n in args.workers:
        contenders[f"cohort_{n}w"] = lambda o, n=n: cohort_run(workdir / "scans", o, options, n)
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        for name, function in contenders.items():
            out = workdir / f"out_{name}_{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            measured = function(out)
            runs[name].append(measured)
            phases = " ".join(f"{k.removesuffix('_s')} {v:.2f}"
                              for k, v in measured.get("phases", {}).items())
            print(f"repeat {repeat + 1}: {name:10s} wall {measured['wall']:7.1f} s, CPU "
                  f"{measured['cpu']:7.1f} s (load average {os.getloadavg()[0]:.1f})"
                  + (f"\n    phases (s): {phases}" if phases else ""), flush=True)
    wall = {name: statistics.median(r["wall"] for r in v) for name, v in runs.items()}
    cpu = {name: statistics.median(r["cpu"] for r in v) for name, v in runs.items()}
    for name in runs:
        print(f"FIGURE {name}_throughput {60 * args.cases / wall[name]:.2f} cases/min")
        print(f"FIGURE {name}_cpu_per_case {cpu[name] / args.cases:.3f} s")
    for name in runs:
        if name == "serial":
            continue
        phases = {k: statistics.median(r["phases"][k] for r in runs[name])
                  for k in runs[name][0]["phases"]}
        for key in ("cluster_start_s", "worker_first_case_s", "worker_warm_up_s",
                    "dispatch_s", "results_s", "cluster_close_s", "case_median_s"):
            print(f"FIGURE {name}_{key.removesuffix('_s')} {phases[key]:.2f} s")
        print(f"FIGURE {name}_overhead {100 * (wall[name] / wall['serial'] - 1):.1f} %")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
