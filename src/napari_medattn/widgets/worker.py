"""The one way widgets run long library calls: off the GUI thread, with progress and Cancel.

A widget hands :func:`start_job` a library call that accepts ``progress`` and ``cancel``
keywords (as :func:`napari_medattn.inference.segment` does) and a function that turns
the result into layers::

    job = start_job(lambda progress, cancel: segment(volume, model, card,
                                                     progress=progress, cancel=cancel),
                    description="Segment brain", on_result=show_layers)
    job.cancel()      # from a Cancel button: the library stops between windows

What the helper guarantees:

* The call runs in a napari thread worker (a Qt thread pool), so the viewer keeps
  drawing and answering the mouse.
* ``progress(done, total)`` calls from the worker thread are relayed through a queued Qt
  signal to a :class:`napari.utils.cancelable_progress` bar in napari's activity dock
  (whose own cancel button also stops the job).
* ``cancel`` is a callable the library polls between units of work (windows,
  iterations); when it fires the library raises
  :class:`~napari_medattn.errors.Cancelled` and nothing reaches ``on_result``.
* ``on_result`` runs on the GUI thread only after success; :func:`add_layers` adds a
  result's layers all or none, so a failure half-way leaves no half-made layer.
* Errors: a :class:`~napari_medattn.errors.MedAttnError` (bad input) becomes one napari
  notification with its sentence and no traceback; a cancel becomes an info
  notification; anything else (a bug) goes to napari's error handler with its traceback.
* The worker thread computes with torch intra-op threads limited to the cores minus
  one on machines with more than two cores, so the GUI thread always finds a free core
  (see :func:`worker_threads`). When the job has every core (two or fewer), the
  application's running animations (napari's "in progress" spinner) are slowed while it
  computes (:class:`~napari_medattn.widgets.host.BusyAnimations`, one of the host
  workarounds in :mod:`napari_medattn.widgets.host`, each with its off switch).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import notification_manager, show_error, show_info
from qtpy.QtCore import QObject, Signal, Slot
from qtpy.QtWidgets import QWidget

from napari_medattn.errors import Cancelled, MedAttnError
from napari_medattn.widgets.host import busy_animations, painted_on_next_pass

#: ``function(progress, cancel)``: the library call, with the two keywords it must accept.
JobFunction = Callable[..., Any]

def worker_threads(cores: int | None = None) -> int:
    """Torch intra-op threads for a job run from the GUI: every core but one when there
    are more than two, else every core.

    On two cores, leaving one to the GUI halves the computation: measured on the 2-core
    test machine (quiet, MNI152 T1, default model), the Segment run took 12.0 s with one
    thread and 10.2 s with two, and the longest event-loop gap while computing stayed at
    37 ms with two (docs/benchmarks/viewer.md): the GUI thread needs little CPU and the
    scheduler gives it its slices.

    Parameters
    ----------
    cores : int, optional
        Usable CPU cores; default: those this process may run on.
    """
    if cores is None:
        cores = _usable_cores()
    return cores if cores <= 2 else cores - 1


def _usable_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _with_torch_threads(function: Callable[[], Any], threads: int, restore: int) -> Any:
    """Run ``function`` on this (worker) thread with ``threads`` torch threads.

    OpenMP keeps the thread count per calling thread, and a pooled worker thread keeps
    whatever it was last given, so the limit is set here, on the thread that computes,
    and the process-wide default is put back afterwards for threads started later.
    """
    import torch

    torch.set_num_threads(threads)
    try:
        return function()
    finally:
        torch.set_num_threads(restore)


class _ProgressRelay(QObject):
    """Lives on the GUI thread: progress emitted from the worker is queued to it."""

    progressed = Signal(int, int)

    def __init__(self, bar: cancelable_progress) -> None:
        super().__init__()
        self.progress_bar = bar
        self.progressed.connect(self._update)

    @Slot(int, int)
    def _update(self, done: int, total: int) -> None:
        if self.progress_bar.total != total:
            self.progress_bar.total = total
        if done > self.progress_bar.n:
            self.progress_bar.update(done - self.progress_bar.n)


class Job:
    """A library call running in a napari thread worker; see :func:`start_job`.

    Attributes
    ----------
    worker : FunctionWorker
        The napari worker (its ``finished`` signal fires after every outcome).
    description : str
        Shown in the activity dock and in notifications.
    outcome : str or None
        ``"done"``, ``"cancelled"``, ``"failed"`` once known, None before.
    finished : bool
        True once the worker ended and the job's GUI-thread handlers all ran.
    progress_bar : napari.utils.cancelable_progress
        The job's bar in napari's activity dock.
    """

    def __init__(self, function: JobFunction, *, description: str,
                 on_result: Callable[[Any], None],
                 on_finished: Callable[[Job], None] | None = None) -> None:
        self.description = description
        self.outcome: str | None = None
        self.finished = False
        self._on_result = on_result
        self._on_finished = on_finished
        self._cancel_event = threading.Event()
        self.progress_bar = cancelable_progress(desc=description, total=0)
        self._relay = _ProgressRelay(self.progress_bar)

        import torch

        # Read on the GUI thread: the count the user's session runs with.
        gui_threads = torch.get_num_threads()
        threads = min(gui_threads, worker_threads())
        # Whether the job leaves the GUI no core of its own (see host.BusyAnimations).
        self._every_core = threads >= _usable_cores()

        def call() -> Any:
            return _with_torch_threads(
                lambda: function(progress=self._relay.progressed.emit, cancel=self.cancelled),
                threads, gui_threads)

        # By default the worker re-raises its errors on the GUI thread (a traceback for
        # the user); this job decides itself (one sentence for a MedAttnError).
        self.worker: FunctionWorker = create_worker(call, _start_thread=False,
                                                    _ignore_errors=True)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)

    def start(self) -> Job:
        """Start the worker; returns the job."""
        if self._every_core:
            busy_animations.acquire()
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the call to stop at its next check (between windows or iterations)."""
        self._cancel_event.set()

    def cancelled(self) -> bool:
        """Whether Cancel was asked for, here or in the activity dock (polled by the call)."""
        return self._cancel_event.is_set() or self.progress_bar.is_canceled

    @property
    def running(self) -> bool:
        return not self.finished

    # -- on the GUI thread ----------------------------------------------------------
    def _returned(self, result: Any) -> None:
        if self.cancelled():
            # Cancel came after the last check: the user asked for nothing, so show nothing.
            self.outcome = "cancelled"
            show_info(f"{self.description}: cancelled.")
            return
        try:
            self._on_result(result)
        except MedAttnError as error:
            self.outcome = "failed"
            show_error(str(error))
            return
        except Exception:
            self.outcome = "failed"
            notification_manager.receive_error(*sys.exc_info())
            return
        self.outcome = "done"

    def _errored(self, error: BaseException) -> None:
        if isinstance(error, Cancelled):
            self.outcome = "cancelled"
            show_info(f"{self.description}: cancelled.")
        elif isinstance(error, MedAttnError):
            self.outcome = "failed"
            show_error(str(error))
        else:
            self.outcome = "failed"
            notification_manager.receive_error(type(error), error, error.__traceback__)

    def _finished(self) -> None:
        if self._every_core:
            busy_animations.release()
        self.progress_bar.close()
        if self.outcome is None:  # the worker was quit before it returned
            self.outcome = "cancelled"
        self.finished = True
        if self._on_finished is not None:
            self._on_finished(self)


def start_job(function: JobFunction, *, description: str, on_result: Callable[[Any], None],
              on_finished: Callable[[Job], None] | None = None) -> Job:
    """Run ``function(progress=..., cancel=...)`` in a napari worker with progress and Cancel.

    Parameters
    ----------
    function : callable
        The library call; it must accept the keywords ``progress`` (called as
        ``progress(done, total)`` from the worker thread) and ``cancel`` (a callable
        returning True once the user cancelled; the call checks it between units of work
        and raises :class:`~napari_medattn.errors.Cancelled`).
    description : str
        Name of the job in the activity dock and in notifications.
    on_result : callable
        Called on the GUI thread with the call's return value, only on success and only
        if not cancelled; make layers here (with :func:`add_layers`). A MedAttnError it
        raises becomes a notification.
    on_finished : callable, optional
        Called on the GUI thread with the job after every outcome (to re-enable buttons).

    Returns
    -------
    Job
        Already started.
    """
    return Job(function, description=description, on_result=on_result,
               on_finished=on_finished).start()


def add_layers(viewer: Any, layer_data: Sequence[tuple], *,
               widget: QWidget | None = None) -> list:
    """Add napari layer-data tuples ``(data, kwargs, layer_type)`` all or none.

    If adding any of them fails, the ones already added are removed again and the
    error propagates, so the viewer never holds part of a result.

    Parameters
    ----------
    viewer : napari.Viewer
    layer_data : sequence of tuple
    widget : QWidget, optional
        A widget docked in the viewer's window (the one adding the layers): the window
        then repaints on the event loop's next pass (see
        :func:`~napari_medattn.widgets.host.painted_on_next_pass`).
        Found through Qt because a plugin's viewer is a proxy that hides napari's
        private window attribute.

    Returns
    -------
    list of napari.layers.Layer
        The new layers, in order.
    """
    added: list = []
    with painted_on_next_pass(widget.window() if widget is not None else None):
        try:
            for data, kwargs, layer_type in layer_data:
                added.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
        except BaseException:
            for layer in added:
                if layer in viewer.layers:
                    viewer.layers.remove(layer)
            raise
    return added
