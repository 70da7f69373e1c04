"""Run a task over a cohort on Dask distributed: one case is one Dask task.

::

    from napari_medattn import cohort

    result = cohort.run("cases.csv", "segment", "results/", task_options=["--tta"])
    result.table                     # one row per case (pandas); also results.parquet/.csv

The steps: read the manifest, check the output folder (:mod:`.records`), connect to the
cluster (:mod:`.cluster`), skip the cases already done with the same inputs and
parameters, submit the rest (one Dask task each, GPU tasks annotated with their resource),
collect them as they finish with a progress bar (ETA, dashboard address), and write the
results table, summary and plots (:mod:`.results`). Every refusal (malformed manifest,
another cohort's folder, unreachable scheduler, no GPU worker) comes before any case runs.

Nothing lost, nothing done twice: every file is written atomically; a failing case gets its
one sentence and the others finish; a case whose worker died is retried elsewhere by the
scheduler (bounded: its ``allowed-failures``) and then recorded as ``KilledWorker``; Ctrl-C
stops the run, keeps what is done, and the same call resumes it. Inputs are never written.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_medattn.cohort.cluster import (
    connect,
    dashboard_link,
    import_in_background,
    plugin_name,
    run_case_on_worker,
)
from napari_medattn.cohort.manifest import Case, read_manifest
from napari_medattn.cohort.records import (
    CASES_DIR,
    CRASH,
    DONE,
    FAILED,
    KILLED,
    NOT_RUN,
    check_out_folder,
    first_line,
    new_record,
    plan_case,
    set_status,
    sha256_json,
    write_cohort_file,
    write_record,
)
from napari_medattn.cohort.tasks import CohortTask, make_task
from napari_medattn.errors import Cancelled, ReadError


@dataclasses.dataclass
class CohortResult:
    """What a cohort run did.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per case of the manifest (see :mod:`napari_medattn.cohort.results`).
    out : Path
        The output folder.
    ran, skipped, failed : int
        Cases run now, cases skipped as already done, cases that failed now.
    files : list of Path
        The results table, summary and plots written.
    dashboard : str or None
        The Dask dashboard's address during the run.
    timings : dict of str to float
        Wall seconds of the run's phases: ``plan_s`` (manifest, parameters, which cases
        to run), ``cluster_start_s`` (the cluster, and sending it the task), ``cases_s``
        (from the first case submitted to the last one collected), ``cluster_close_s``
        (while the results are written), ``results_s`` (table, summary and plots, and
        waiting for the close) and ``total_s``; phases that did not happen are absent.
    """

    table: Any
    out: Path
    ran: int
    skipped: int
    failed: int
    files: list[Path]
    dashboard: str | None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


#: What writing the results table and plots imports: imported on the calling process while
#: the cases run (it waits on the workers then), not after them. About 1 s of the fixed
#: cost of a run on the 2-core machine (docs/benchmarks/cohort.md).
RESULTS_LIBRARIES = ("pandas", "pyarrow.parquet", "matplotlib.figure",
                     "matplotlib.backends.backend_agg")


def run(manifest: str | os.PathLike | Sequence[Case], task: str | CohortTask,
        out: str | os.PathLike, *, task_options: Sequence[str] = (), client: Any = None,
        scheduler: str | None = None, workers: int | None = None,
        torch_threads: int | None = None, rerun_changed: bool = False,
        progress: bool = True, on_case: Callable[[dict], None] | None = None,
        cluster_options: dict | None = None) -> CohortResult:
    """Run ``task`` on every case of ``manifest``, writing into ``out``.

    Parameters
    ----------
    manifest : path or sequence of Case
        A CSV, an MSD/nnU-Net folder or a folder of scans (see
        :func:`~napari_medattn.cohort.manifest.read_manifest`), or the cases themselves.
    task : str or CohortTask
        ``"segment"``, ``"explain"``, ``"evaluate"`` (with ``task_options`` in the
        command's own syntax), or a task object.
    out : path
        The cohort's output folder: new, empty, or holding this cohort's earlier results.
    client : distributed.Client, optional
        Run on this client's cluster (left open).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); its workers must see
        the manifest's files and ``out`` at the same paths.
    workers : int, optional
        Worker processes of the LocalCluster made when neither ``client`` nor
        ``scheduler`` is given (default: the usable cores), one thread each.
    torch_threads : int, optional
        Torch threads per worker thread (default: the worker's share of its host's cores,
        which is 1 on a LocalCluster with a worker per core).
    rerun_changed : bool
        Accept an output folder whose cases were made with other parameters and redo them
        all; without it such a folder is refused, so no earlier result is overwritten by
        accident.
    progress : bool
        Show a progress bar with ETA and the dashboard's address on stderr.
    on_case : callable, optional
        Called on the calling thread with each finished case's record.
    cluster_options : dict, optional
        Keywords of :func:`~napari_medattn.cohort.cluster.local_cluster` for the
        LocalCluster made here: ``allowed_failures`` (worker deaths a case may cause before
        it is given up; default 3, i.e. 4 tries) and ``dashboard_address`` (default
        ``":8787"``; another port if taken).

    Returns
    -------
    CohortResult

    Raises
    ------
    ReadError
        Malformed manifest, or two case ids that make the same folder name.
    WriteError
        ``out`` holds another cohort, other parameters (without ``rerun_changed``), or
        files that are not a cohort's.
    ClusterError
        The scheduler cannot be reached, or no worker offers the GPU the task needs.
    Cancelled
        Ctrl-C: the cases finished so far are kept and the table lists the rest as not run.

    All of these but Cancelled are raised before any case runs.
    """
    from napari_medattn.cohort.results import write_results

    started = time.perf_counter()
    out = Path(out)
    task = make_task(task, task_options) if isinstance(task, str) else task
    ran = failed = 0
    dashboard = closing = None
    stopped = False
    with contextlib.ExitStack() as cluster:  # closed here on an error
        # The plan comes first: a rerun with nothing to do starts no cluster. (Starting a
        # first run's cluster on another thread during the plan left a leaked semaphore
        # warning after Ctrl-C, tests/cohort/test_ctrl_c.py.)
        cases = list(manifest) if not isinstance(manifest, (str, os.PathLike)) else \
            read_manifest(manifest, exclude=[out])
        folders = case_folders(cases)
        parameters = task.parameters()
        parameters_sha = sha256_json(parameters)
        check_out_folder(out, task.name, parameters, rerun_changed)
        todo = _cases_to_run(cases, out, folders, parameters_sha)
        skipped = len(cases) - len(todo)
        timings = {"plan_s": time.perf_counter() - started}
        if todo:
            mark = time.perf_counter()
            dask_client = cluster.enter_context(connect(client, scheduler, workers, task,
                                                        torch_threads, cluster_options))
            timings["cluster_start_s"] = time.perf_counter() - mark
            write_cohort_file(out, task.name, parameters, parameters_sha, manifest)
            dashboard = dashboard_link(dask_client)
            import_in_background(RESULTS_LIBRARIES)
            mark = time.perf_counter()
            try:
                ran, failed = _run_cases(dask_client, task, todo, out, folders,
                                         parameters_sha, progress, dashboard, on_case)
            except KeyboardInterrupt:  # Ctrl-C: the unfinished cases are cancelled
                stopped = True
            timings["cases_s"] = time.perf_counter() - mark
            # Every record is on disk: the cluster closes (its workers take ~1 s to exit)
            # while the table and plots are written. After Ctrl-C it closes first: a
            # worker finishes its running case (or is stopped after 4 s), and the table
            # must count that case.
            if not stopped:
                closing = _close_in_background(cluster.pop_all(), timings)
        else:  # nothing to do: no cluster
            write_cohort_file(out, task.name, parameters, parameters_sha, manifest)
    mark = time.perf_counter()
    try:
        table, files = write_results(out, cases, folders)  # after Ctrl-C: rest "not run"
    finally:
        if closing is not None:
            closing.result()  # its error, if any, is raised here
    timings["results_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started
    if stopped:
        finished = int((table["status"] != NOT_RUN).sum())
        raise Cancelled(f"Stopped with {finished} of {len(table)} cases finished; they are "
                        f"kept, and the same command runs the rest.")
    return CohortResult(table, out, ran, skipped, failed, files, dashboard, timings)


def _cases_to_run(cases: Sequence[Case], out: Path, folders: dict[str, str],
                  parameters_sha: str) -> list[tuple[Case, str | None, dict]]:
    """``(case, inputs SHA-256 or None, input stats)`` of each case not yet done (see
    :func:`~napari_medattn.cohort.records.plan_case`)."""
    todo = []
    for case in cases:
        inputs_sha, stats, needed = plan_case(case, out / CASES_DIR / folders[case.case_id],
                                              parameters_sha)
        if needed:
            todo.append((case, inputs_sha, stats))
    return todo


def _close_in_background(stack: contextlib.ExitStack, timings: dict[str, float]
                         ) -> concurrent.futures.Future:
    """Close ``stack`` (the client and cluster) on another thread; the future's result
    waits for it. Its seconds go into ``timings["cluster_close_s"]``."""
    def close() -> None:
        mark = time.perf_counter()
        stack.close()
        timings["cluster_close_s"] = time.perf_counter() - mark

    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="medattn-cohort")
    future = executor.submit(close)
    executor.shutdown(wait=False)
    return future


def case_folders(cases: Sequence[Case]) -> dict[str, str]:
    """The output folder name of each case id (a file-name-safe form of the id).

    Raises
    ------
    ReadError
        Two ids that make the same folder name.
    """
    from napari_medattn.cli.common import safe_name

    folders: dict[str, str] = {}
    owners: dict[str, str] = {}
    for case in cases:
        folder = safe_name(case.case_id) or "case"
        if folder in owners and owners[folder] != case.case_id:
            raise ReadError(f"The case ids {owners[folder]!r} and {case.case_id!r} make the "
                            f"same folder name {folder!r}; make them differ in letters or "
                            f"digits.")
        owners[folder] = case.case_id
        folders[case.case_id] = folder
    return folders


def _run_cases(client: Any, task: CohortTask, todo: list, out: Path, folders: dict[str, str],
               parameters_sha: str, progress: bool, dashboard: str | None,
               on_case: Callable[[dict], None] | None) -> tuple[int, int]:
    """Submit every case to run, collect them as they finish; returns (ran, failed)."""
    from distributed import as_completed
    from tqdm import tqdm

    resources = task.resources() or None
    futures = {}
    for case, inputs_sha, stats in todo:
        future = client.submit(run_case_on_worker, plugin_name(task), case,
                               str(out / CASES_DIR / folders[case.case_id]), parameters_sha,
                               inputs_sha, stats, key=f"{task.name}-{folders[case.case_id]}-"
                               f"{parameters_sha[:8]}-{time.time_ns()}", pure=False,
                               resources=resources)
        futures[future] = (case, inputs_sha, stats)
    if progress and dashboard:
        print(f"Dask dashboard: {dashboard}", file=sys.stderr)
    bar = tqdm(total=len(futures), desc=f"cohort {task.name}", unit="case", file=sys.stderr,
               disable=not progress or None, dynamic_ncols=True)
    ran = failed = 0
    try:
        for future in as_completed(futures, loop=client.loop):
            case, inputs_sha, stats = futures.pop(future)
            record = _collect(future, task, case, out / CASES_DIR / folders[case.case_id],
                              parameters_sha, inputs_sha, stats)
            ran += 1
            failed += record["details"]["status"] != DONE
            bar.update(1)
            if on_case is not None:
                on_case(record)
    except KeyboardInterrupt:
        client.cancel(list(futures))
        raise
    finally:
        bar.close()
    return ran, failed


def _collect(future: Any, task: CohortTask, case: Case, case_dir: Path, parameters_sha: str,
             inputs_sha: str | None, stats: dict) -> dict:
    """A finished case's record; a case whose worker kept dying gets one written here."""
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except KilledWorker:
        kind, message = KILLED, ("The worker running this case died each time it was tried "
                                 "(out of memory or a crash); the next run tries it again.")
    except FutureCancelledError:
        kind, message = KILLED, "The case was cancelled; the next run tries it again."
    except Exception as error:  # noqa: BLE001 - e.g. a result that could not be sent back
        kind, message = CRASH, f"{type(error).__name__}: {first_line(error)}"
    record = new_record(task, case, parameters_sha, inputs_sha, stats)
    set_status(record, FAILED, message, kind)
    case_dir.mkdir(parents=True, exist_ok=True)
    return write_record(record, case_dir)
