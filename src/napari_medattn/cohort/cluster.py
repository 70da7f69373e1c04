"""The Dask side of a cohort: the cluster, the task on each worker, one case's run.

Where it runs. By default on a :class:`distributed.LocalCluster` of single-threaded worker
processes made for the run (:func:`local_cluster`); on an existing Dask scheduler by address
(dask-jobqueue on Slurm/PBS, Kubernetes, a cloud) whose workers see the same files; or on the
caller's client. The task object goes to each worker once, through :class:`TaskPlugin`,
which loads the model on a thread of its own as soon as it arrives and keeps it; torch gets
the worker's share of the host's cores (one thread per Dask thread on a host the workers fill), and the
task's memory planner gets the worker's share of its memory limit (:func:`memory_share`).

The calling process is left as it was: a LocalCluster's nannies write ``OMP_NUM_THREADS=1``
(and MKL/OpenBLAS/malloc settings) into the *parent's* environment before spawning workers
and leave them there (``distributed.nanny.pre-spawn-environ``), which would slow napari's own
inference afterwards. Here the workers get the thread settings in their own environment
instead, and the parent's environment is restored once the workers have started and again
when the cluster closes.

Fixed costs overlap. A worker of :func:`local_cluster` starts importing torch and the
package (:data:`WORKER_IMPORTS`) as soon as its process is up, while the cluster finishes
starting and the client plans the run; the task's plugin then loads the model on the same
thread; the first case waits for that thread instead of doing the same work in turn.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from napari_medattn.cohort.manifest import Case
from napari_medattn.cohort.records import (
    CRASH,
    FAILED,
    INPUT_ERROR,
    MEMORY,
    first_line,
    inputs_sha256,
    is_settled,
    new_record,
    read_record,
    set_status,
    sha256_json,
    write_record,
)
from napari_medattn.cohort.tasks import CohortTask
from napari_medattn.errors import ClusterError, InsufficientMemoryError, MedAttnError

#: Worker environment that stops numeric libraries from each starting one thread per core.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Seconds to wait for a scheduler given by address.
CONNECT_TIMEOUT_S = 10
#: Worker deaths a case may cause before the scheduler gives it up as KilledWorker (Dask's
#: default: 3, i.e. 4 tries).
ALLOWED_FAILURES = 3
PLUGIN_PREFIX = "medattn-cohort-"
#: What each worker of :func:`local_cluster` imports as its process starts, on a thread of
#: its own: every case needs them (torch and the package's reading and provenance code,
#: about 2.4 s of a fresh worker on the quiet 2-core machine, docs/benchmarks/cohort.md).
WORKER_IMPORTS = ("torch", "napari_medattn.io", "napari_medattn.io.provenance")
#: The thread importing :data:`WORKER_IMPORTS` in this worker process (None elsewhere).
_imports: threading.Thread | None = None


def plugin_name(task: CohortTask) -> str:
    """The name the task's worker plugin is registered under (one per parameter set)."""
    return PLUGIN_PREFIX + sha256_json(task.parameters())[:16]


class TaskPlugin:
    """The task on a worker: torch threads set once, the task's state loaded once.

    A :class:`distributed.WorkerPlugin` (registered under :attr:`name`); the cases reach
    it through :func:`run_case_on_worker`. Loading starts when the plugin arrives, on a
    warm-up thread (a long model load then neither blocks the worker's heartbeat nor
    waits for the first case); a load that fails there is left to the first case, which
    loads again and records the error as its own.
    """

    #: Registering the same task (same parameters) again leaves the workers' copy, and the
    #: model it loaded, in place.
    idempotent = True

    def __init__(self, task: CohortTask, threads_per_host: dict[str, int],
                 torch_threads: int | None = None) -> None:
        self.task = task
        self.name = plugin_name(task)
        self.threads_per_host = threads_per_host
        self.requested_threads = torch_threads
        self.torch_threads = torch_threads or 1
        self.memory_limit: int | None = None
        self.worker_threads = 1
        self.memory_bytes: int | None = None
        self.loads = 0
        self.warm_up_s: float | None = None
        self._state: Any = None
        self._lock = threading.Lock()
        self._warm_up: threading.Thread | None = None

    def setup(self, worker: Any) -> None:
        self.memory_limit = worker.memory_manager.memory_limit  # bytes; None: no limit
        self.worker_threads = worker.state.nthreads
        if not self.requested_threads:
            host = worker.address.rsplit(":", 1)[0]
            busy = self.threads_per_host.get(host) or worker.state.nthreads
            self.torch_threads = max(1, len(os.sched_getaffinity(0)) // max(1, busy))
        # A worker without the task's resources (a CPU worker, for a GPU task) never
        # gets a case: it does not load the model.
        offers = worker.state.total_resources
        takes_cases = all(offers.get(k, 0) >= v for k, v in self.task.resources().items())
        self._warm_up = threading.Thread(target=self._load_early, args=(takes_cases,),
                                         daemon=True, name=f"{self.name}-warm-up")
        self._warm_up.start()

    def _load_early(self, load: bool) -> None:
        """The warm-up thread: the worker's imports, then the task's state."""
        started = time.perf_counter()
        if _imports is not None:
            _imports.join()
        # Any failure is the first case's to meet again and record (see the class).
        with contextlib.suppress(Exception):
            import torch

            torch.set_num_threads(self.torch_threads)
            if load:
                self.state()
        self.warm_up_s = time.perf_counter() - started

    def ready(self) -> float | None:
        """Wait for the warm-up thread; its seconds the first time, None afterwards.

        A case waits before it imports anything: two threads importing the same modules
        in different orders can meet in a circular import."""
        if self._warm_up is not None:
            self._warm_up.join()
        with self._lock:
            seconds, self.warm_up_s = self.warm_up_s, None
        return seconds

    def state(self) -> Any:
        """The task's loaded state (the model), loaded by the first case that asks, with
        the memory budget of one case on this worker (measured before the model loads:
        the planner counts the model's bytes itself)."""
        import dask
        import psutil

        from napari_medattn.inference.memory import available_ram
        from napari_medattn.inference.window_options import MemoryBudget

        with self._lock:
            if self.loads == 0:
                self.memory_bytes = memory_share(
                    self.memory_limit, self.worker_threads, psutil.Process().memory_info().rss,
                    available_ram(), dask.config.get("distributed.worker.memory.terminate"))
                self._state = self.task.load(None if self.memory_bytes is None else
                                             MemoryBudget(free_ram=self.memory_bytes))
                self.loads += 1
            return self._state

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_lock", "_state", "_warm_up")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _state=None, loads=0,
                             _warm_up=None, warm_up_s=None)


def memory_share(memory_limit: int | None, threads: int, process_bytes: int, free_ram: int,
                 terminate: float | bool | None = 0.95) -> int | None:
    """Bytes one case on a worker may plan to hold at its peak.

    Dask's nanny restarts a worker whose process passes ``terminate`` (a fraction, 0.95 by
    default) of its memory limit, so a case may use what the limit leaves above the
    process's present size, shared among the worker's threads (each runs a case), and no
    more than the host's free RAM.

    Parameters
    ----------
    memory_limit : int or None
        The worker's memory limit in bytes (None or 0: no limit).
    threads : int
        The worker's threads.
    process_bytes : int
        The worker process's resident size now, in bytes.
    free_ram : int
        The host's available RAM, in bytes.
    terminate : float, False or None
        Dask's ``distributed.worker.memory.terminate`` (False: never restarted, the whole
        limit counts).

    Returns
    -------
    int or None
        None without a limit (the planner then plans against the free RAM it measures).
    """
    if not memory_limit:
        return None
    ceiling = int(memory_limit * (terminate or 1.0))
    return min(free_ram, max(0, ceiling - process_bytes) // max(1, threads))


def run_case_on_worker(plugin_name: str, case: Case, case_dir: str, parameters_sha: str,
                       inputs_sha: str | None, stats: dict) -> dict:
    """Run one case on this worker and write its record; returns the record.

    A library error (bad input) is recorded with its sentence; anything else with its
    type and first line, so that one bad case never ends the run. A case whose record is
    already settled for these inputs and parameters is not run again: Dask recomputes a
    finished task whose result died with its worker before the client fetched it, and a
    case must be done once.
    """
    from distributed import get_worker

    plugin = get_worker().plugins[plugin_name]
    warm_up_s = plugin.ready()
    folder = Path(case_dir)
    if inputs_sha is None:
        inputs_sha = inputs_sha256(case)
    earlier = read_record(folder)
    if is_settled(earlier, inputs_sha, parameters_sha):
        return earlier
    # ``load_s``: what this case waited for the task's state (a load the warm-up thread
    # could not do); ``warm_up_s`` (the worker's first case only): that thread's seconds,
    # the worker's imports and model load, spent while the cluster started.
    record = new_record(plugin.task, case, parameters_sha, inputs_sha, stats)
    if warm_up_s is not None:
        record.details["warm_up_s"] = warm_up_s
    import torch

    if torch.get_num_threads() != plugin.torch_threads:
        torch.set_num_threads(plugin.torch_threads)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    loads, started = plugin.loads, time.perf_counter()
    try:
        state = plugin.state()
        record.details["load_s"] = time.perf_counter() - started if plugin.loads > loads else 0.0
        output = plugin.task.run_case(state, case, folder)
    except InsufficientMemoryError as error:  # may fit on a bigger worker: retried
        set_status(record, FAILED, str(error), MEMORY)
    except MedAttnError as error:
        set_status(record, FAILED, str(error), INPUT_ERROR)
    except Exception as error:  # noqa: BLE001 - a crash of one case is that case's error
        set_status(record, FAILED, f"{type(error).__name__}: {first_line(error)}", CRASH)
    else:
        record.outputs.update(output.outputs)
        record.notes.extend(output.notes)
        record.model = output.model
        record.details["figures"] = output.figures
    record.details.update(worker=get_worker().address, memory_budget_bytes=plugin.memory_bytes)
    return write_record(record, folder)


def _remove_stale_temporaries(folder: Path) -> None:
    """Hidden files in a case folder are the atomic writer's temporaries of a worker that
    was killed mid-write (nothing else of ours or the user's lives there)."""
    for path in folder.glob(".*"):
        if path.is_file():
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def connect(client: Any, scheduler: str | None, workers: int | None, task: CohortTask,
            torch_threads: int | None = None, cluster_options: dict | None = None
            ) -> Iterator[Any]:
    """The client to run on, with the task's plugin registered; checks GPU workers.

    ``cluster_options`` go to :func:`local_cluster` when one is made here."""
    from distributed import Client

    needs = task.resources()
    if client is not None:
        _check_resources(client, needs, "the given client's cluster")
        register_task(client, task, torch_threads)
        yield client
        return
    if scheduler is not None:
        try:
            remote = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"Cannot reach the Dask scheduler at {scheduler} "
                               f"({first_line(error) or type(error).__name__}).") from None
        with remote:
            _check_resources(remote, needs, f"the scheduler at {scheduler}")
            register_task(remote, task, torch_threads)
            yield remote
        return
    with local_cluster(workers, resources=needs, **(cluster_options or {})) as cluster, \
            Client(cluster, set_as_default=False) as local:
        register_task(local, task, torch_threads)
        yield local


@contextlib.contextmanager
def local_cluster(workers: int | None = None, *, resources: dict | None = None,
                  allowed_failures: int = ALLOWED_FAILURES,
                  dashboard_address: str = ":8787",
                  memory_limit: str | int = "auto") -> Iterator[Any]:
    """A LocalCluster of single-threaded worker processes that leaves this process's
    environment as it found it (see the module docstring).

    Parameters
    ----------
    workers : int, optional
        Worker processes (default: the usable cores).
    resources : dict, optional
        Resources each worker offers (``{"GPU": 1}`` for a GPU task).
    memory_limit : str or int
        Each worker's memory limit (bytes, or ``"4GB"``); ``"auto"``: the machine's RAM
        shared among the workers. The worker is restarted past 95 % of it, and each case
        plans its memory within it (:func:`memory_share`).
    """
    import dask
    from distributed import LocalCluster

    from dask.utils import parse_bytes

    count = workers or len(os.sched_getaffinity(0))
    if count < 1:
        raise ClusterError(f"A cohort needs at least one worker, not {count}.")
    if memory_limit != "auto":
        try:
            memory_limit = parse_bytes(memory_limit)
        except (ValueError, TypeError):
            raise ClusterError(f"The memory limit {memory_limit!r} is not a size such as "
                               f"4GB or 4000000000.") from None
    saved = dict(os.environ)
    worker_env = {name: "1" for name in THREAD_VARIABLES}
    settings = {"distributed.nanny.pre-spawn-environ": {},
                "distributed.scheduler.allowed-failures": allowed_failures,
                # One case per worker thread at a time, the rest queued on the scheduler:
                # a worker that dies then takes only the case it was running with it (the
                # default 1.1 hands a single-thread worker a second case, which a death
                # would count against too), and a case never waits behind a slow one.
                "distributed.scheduler.worker-saturation": 1.0,
                # The statistical profiler samples the running case every 10 ms (the
                # dashboard's Profile tab): measured on the 2-core machine it made each
                # case ~25 % slower (docs/benchmarks/cohort.md).
                "distributed.worker.profile.enabled": False,
                # Dask's housekeeping polls an idle 1-worker cluster at 4.8 % of a core
                # (1.8 % in the worker, beside its case), measured on the 2-core machine;
                # these intervals bring it to 0.9 %: the event-loop health check (20 ms;
                # it only warns of a blocked loop), the dashboard's system graphs (0.5 s)
                # and the memory monitor (0.1 s; a worker past its limit is then restarted
                # within 1 s, and each case plans within the limit).
                "distributed.admin.tick.interval": "1s",
                "distributed.admin.system-monitor.interval": "2s",
                "distributed.worker.memory.monitor-interval": "1s"}
    try:
        with dask.config.set(settings):
            cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                   env=worker_env, resources=resources or None,
                                   preload=[__name__],  # dask_setup below, in each worker
                                   memory_limit=memory_limit,
                                   dashboard_address=dashboard_address,
                                   silence_logs=40)  # logging.ERROR: no restart chatter
        _restore_environment(saved)
        with cluster:
            yield cluster
    finally:
        _restore_environment(saved)


def dask_setup(worker: Any) -> None:
    """Start of each worker process of :func:`local_cluster` (a Dask preload): it ignores
    Ctrl-C, and starts importing :data:`WORKER_IMPORTS` on a thread of its own.

    A terminal sends Ctrl-C to the workers too; the calling process stops the run and
    closes the cluster, so a worker has nothing to do on it but print a traceback."""
    global _imports
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _imports = import_in_background(WORKER_IMPORTS)


def dask_teardown(worker: Any) -> None:
    """A worker of :func:`local_cluster` closing: its process then ends without Python's
    clean-up of its modules, which with torch and the package loaded took 3-4 s of the
    cluster's close at load 16 (0.7 s without them), measured on the 2-core machine.
    Nothing of the worker is kept: every case's files and record are written by then."""
    atexit.register(_exit_now)


def _exit_now() -> None:
    """Last at exit (atexit runs the hooks registered later first): flush, then end."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or detached stream
            stream.flush()
    os._exit(0)


def import_in_background(modules: Sequence[str]) -> threading.Thread:
    """Import ``modules`` on a daemon thread; returns the started thread. A module
    imported by two threads at once is imported once (the second waits for the first).
    """
    def load() -> None:
        for name in modules:
            with contextlib.suppress(ImportError):  # reported where it is used
                importlib.import_module(name)

    thread = threading.Thread(target=load, name="medattn-cohort-imports", daemon=True)
    thread.start()
    return thread


def _restore_environment(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _check_resources(client: Any, needs: dict, where: str) -> None:
    if not needs:
        return
    workers = client.scheduler_info().get("workers", {}).values()
    if not any(all(w.get("resources", {}).get(k, 0) >= v for k, v in needs.items())
               for w in workers):
        wanted = ", ".join(f"{k}={v:g}" for k, v in needs.items())
        raise ClusterError(f"No worker of {where} offers {wanted}; start GPU workers with "
                           f"--resources {wanted.replace(', ', ',')} or run with --device cpu.")


def register_task(client: Any, task: CohortTask, torch_threads: int | None = None
                  ) -> TaskPlugin:
    threads: dict[str, int] = {}
    for address, info in client.scheduler_info().get("workers", {}).items():
        host = address.rsplit(":", 1)[0]
        threads[host] = threads.get(host, 0) + int(info.get("nthreads", 1))
    plugin = TaskPlugin(task, threads, torch_threads)
    client.register_plugin(_as_worker_plugin(plugin), name=plugin.name)
    return plugin


def _as_worker_plugin(plugin: TaskPlugin) -> Any:
    """:class:`TaskPlugin` as a WorkerPlugin (the base class is imported only here, so that
    reading this module does not import distributed)."""
    from distributed import WorkerPlugin

    if not isinstance(plugin, WorkerPlugin):
        plugin.__class__ = type("TaskWorkerPlugin", (TaskPlugin, WorkerPlugin), {})
    return plugin


def dashboard_link(client: Any) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing) is no reason to stop
        return None
