"""``medattn cohort run``: one task over a cohort of scans on Dask distributed.

``medattn cohort run MANIFEST --task segment --out DIR [--workers N | --scheduler ADDRESS]
[--torch-threads N] [--rerun-changed] [task options]``: the task options are those of
``medattn segment`` (``detect``, ``register``, ``explain``, ``evaluate``), e.g. ``--model
NAME --tta``. Each case's outputs go into ``DIR/cases/<case>/``; ``DIR/results.parquet``
and ``results.csv`` hold one row per case, with ``summary.csv`` and the ``summary_*.png``
plots beside them. The exit code is 0 when
every case is done, 1 when any failed (its sentence is in the table and on stderr), and
running the same command again does only what is not done yet (see
:mod:`napari_medattn.cohort.run`).
"""

from __future__ import annotations

import argparse
import sys

#: Task names, kept here so that ``medattn --help`` imports neither Dask nor torch; a test
#: checks they equal :data:`napari_medattn.cohort.TASKS`.
TASK_NAMES = ("segment", "detect", "register", "explain", "evaluate")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``medattn cohort run MANIFEST --task T --out DIR [options]``."""
    parser = subparsers.add_parser(
        "cohort",
        help="run segment, detect, register, explain or evaluate over a cohort on Dask "
             "(resumable, one results table)",
        description="Cohort runs on Dask distributed: a LocalCluster on this machine by "
                    "default, or any running Dask scheduler by address.",
    )
    commands = parser.add_subparsers(title="cohort commands", metavar="COMMAND",
                                     parser_class=_TaskOptionsParser)
    run = commands.add_parser(
        "run",
        help="run a task on every case of a manifest",
        description="Run a task on every case of MANIFEST (a CSV with columns case, image "
                    "and optionally reference and moving; an MSD/nnU-Net dataset folder; or "
                    "a folder of scans), one case per Dask task, and write each case's "
                    "outputs into DIR/cases/<case>/ and one results table "
                    "(results.parquet, results.csv) with summary.csv and summary plots. "
                    "Other options (after MANIFEST) are the task's own, as `medattn TASK "
                    "--help` lists them (e.g. --model NAME --tta). Running the same command again "
                    "skips the cases already done with the same inputs and parameters; "
                    "Ctrl-C stops cleanly and the same command resumes. Inputs are never "
                    "written to.",
    )
    run.add_argument("manifest", metavar="MANIFEST",
                     help="CSV file, MSD/nnU-Net dataset folder, or folder of scans")
    run.add_argument("--task", required=True, choices=TASK_NAMES,
                     help="what to run on each case")
    run.add_argument("--out", required=True, metavar="DIR",
                     help="the cohort's output folder: new, empty, or this cohort's own")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="worker processes of the local cluster, one thread each "
                            "(default: the usable cores)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="address of a running Dask scheduler (e.g. tcp://host:8786); "
                            "its workers must see the manifest's files and DIR")
    run.add_argument("--torch-threads", type=int, metavar="N",
                     help="torch threads per worker (default: the worker's share of its "
                          "machine's cores)")
    run.add_argument("--rerun-changed", action="store_true",
                     help="DIR holds this cohort made with other parameters: redo every "
                          "case with the new ones (without it such a folder is refused)")
    run.add_argument("--memory-limit", default="auto", metavar="BYTES",
                     help="memory limit of each local worker, e.g. 4GB (default: auto, the "
                          "machine's RAM shared among the workers); a worker is restarted "
                          "past 95 %% of it, and each case plans its window batch within it")
    run.add_argument("--dashboard", default=":8787", metavar="ADDRESS",
                     help="where the local cluster's dashboard listens (default: :8787; "
                          "another port if taken)")
    run.set_defaults(func=run_cohort)
    parser.set_defaults(func=lambda args: _help(parser))


class _TaskOptionsParser(argparse.ArgumentParser):
    """A parser that keeps the options it does not know as the task's own
    (``args.task_options``), which the task's command parser then checks."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        namespace.task_options = list(extra)
        return namespace, []


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_cohort(args: argparse.Namespace) -> int:
    """Run the cohort; 0 when every case is done, 1 when any failed."""
    from napari_medattn.cohort import run
    from napari_medattn.errors import Cancelled

    try:
        result = run(args.manifest, args.task, args.out, task_options=args.task_options,
                     scheduler=args.scheduler, workers=args.workers,
                     rerun_changed=args.rerun_changed, torch_threads=args.torch_threads,
                     cluster_options={"dashboard_address": args.dashboard,
                                      "memory_limit": args.memory_limit})
    except KeyboardInterrupt:  # before the cases ran, or while the table was written
        raise Cancelled("Stopped; the cases finished so far are kept, and the same command "
                        "runs the rest.") from None
    failed = result.table[result.table["status"] != "done"]
    for case, error in zip(failed["case"], failed["error"]):
        print(f"medattn cohort: {case}: {error}", file=sys.stderr)
    done = len(result.table) - len(failed)
    print(f"{done} of {len(result.table)} cases done ({result.ran} run now, "
          f"{result.skipped} already done, {len(failed)} failed); results in "
          + ", ".join(str(p) for p in result.files[:2]))
    return 1 if len(failed) else 0
