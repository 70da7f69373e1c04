"""Changes the plugin makes to its host's global state: napari, Qt, vispy, the Python GC.

Each works around a measured stall of the viewer in the host versions named, and each can
be turned off with one environment variable, read when the workaround would act::

    NAPARI_MEDATTN_NO_GC_FREEZE=1          # freeze_startup_objects does nothing
    NAPARI_MEDATTN_NO_SLOW_MOVIES=1        # busy_animations leaves Qt movies alone
    NAPARI_MEDATTN_NO_LABELS_WARMUP=1      # warm_up_labels_display does nothing
    NAPARI_MEDATTN_NO_DEFERRED_REPAINT=1   # painted_on_next_pass paints at once

:data:`WORKAROUNDS` lists them with the host version each targets and the measurement
that justifies it (docs/host_workarounds.md; the figures are in
docs/benchmarks/viewer.md). When napari changes the behaviour a workaround answers,
re-measure with it off before keeping it.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

#: Prefix of the environment variables that turn a workaround off.
ENV_PREFIX = "NAPARI_MEDATTN_NO_"
#: Frames per second of the application's animations while a job computes on every core.
BUSY_ANIMATION_FPS = 4


@dataclasses.dataclass(frozen=True)
class Workaround:
    """One change to the host's global state and why it is made."""

    name: str       # NAPARI_MEDATTN_NO_<name>=1 turns it off
    targets: str    # host versions it was measured with
    measured: str   # what it buys, in one sentence


WORKAROUNDS = (
    Workaround("GC_FREEZE", "napari 0.9.2, Python 3.11, torch 2.13",
               "A full garbage collection walked ~440,000 start-up objects in ~200 ms with "
               "the GIL held; one fell on the first result layer (222 ms instead of 8 ms)."),
    Workaround("SLOW_MOVIES", "napari 0.9.2 with PyQt6 and software OpenGL (Mesa llvmpipe)",
               "napari's activity spinner at 34 frames/s took ~1 s of CPU per 10 s from a "
               "job on every core: Segment 10.4-11.6 s from the widget vs 6.9 s from the "
               "CLI, 7.2-7.6 s with the spinner stopped."),
    Workaround("LABELS_WARMUP", "napari 0.9.2, vispy 0.15",
               "The first Labels layer of a process took 0.3-0.5 s longer to insert on the "
               "GUI thread (vispy's DashAtlas); median 144 ms -> 93 ms with the warm-up."),
    Workaround("DEFERRED_REPAINT", "napari 0.9.2 with software OpenGL",
               "Inserting a Labels layer (75-85 ms) and drawing it (~40 ms) in one event-"
               "loop pass made a 120-126 ms stop; on two passes the longest was 91 ms."),
)


def enabled(name: str) -> bool:
    """Whether the workaround ``name`` (one of :data:`WORKAROUNDS`) is on: it is unless
    ``NAPARI_MEDATTN_NO_<name>`` is set to something other than empty or ``0``."""
    if name not in {w.name for w in WORKAROUNDS}:
        raise ValueError(f"Unknown host workaround {name!r}.")
    return os.environ.get(ENV_PREFIX + name, "") in ("", "0")


# ------------------------------------------------------------------------ GC_FREEZE
_startup_objects_frozen = False


def freeze_startup_objects() -> bool:
    """Collect garbage once, then exclude the objects alive now from later collections
    (:func:`gc.freeze`); done once per process, when the first job widget is made.
    Returns whether the freeze happened now.

    A napari session with torch holds about 440,000 objects tracked by the garbage
    collector after start-up, nearly all of them for good (modules, classes, functions,
    Qt wrappers). Every full collection walked them all: about 200 ms with the GIL held,
    so the viewer stopped for 200 ms whenever one fell due, whichever thread allocated.
    One fell on the first result layer of the first Segment run (the layer's construction
    took 222 ms instead of 8 ms; docs/benchmarks/viewer.md). After the freeze a full
    collection walks only the objects made since. The cost: one 200 ms collection here,
    while a dock widget opens, and frozen objects that become garbage later stay in
    memory (start-up objects rarely do).
    """
    global _startup_objects_frozen
    if _startup_objects_frozen or not enabled("GC_FREEZE"):
        return False
    gc.collect()
    gc.freeze()
    _startup_objects_frozen = True
    return True


# ----------------------------------------------------------------------- SLOW_MOVIES
class BusyAnimations:
    """Slows the running Qt movies of the application's windows while jobs that use every
    core compute, and restores them when the last such job ends.

    The movie that runs during a job is napari's "in progress" spinner next to the
    activity button: 90 frames of 256 x 256 pixels played at 34 frames per second, each
    frame decoded, scaled and drawn into a window that holds an OpenGL canvas, so every
    frame re-composes the window. With software OpenGL (Mesa llvmpipe: virtual machines,
    remote desktops, Xvfb) that cost the GUI thread and the X server about 1 s of CPU per
    10 s, and because the job's torch threads then had no idle core, each stolen slice
    stalled a whole OpenMP team: the default model on the MNI152 T1 took 10.4-11.6 s from
    the Segment widget against 6.9 s from the command line, and 7.2-7.6 s with the
    spinner stopped (docs/benchmarks/viewer.md). At :data:`BUSY_ANIMATION_FPS` the spinner
    still moves. Jobs that leave the GUI a core of its own leave the animations alone.
    """

    def __init__(self) -> None:
        self._jobs = 0
        self._speeds: list[tuple[Any, int]] = []  # (movie, speed before)

    def acquire(self) -> None:
        """A job starts computing on every core (GUI thread)."""
        self._jobs += 1
        if self._jobs == 1 and enabled("SLOW_MOVIES"):
            self._speeds = [(movie, movie.speed()) for movie in _running_movies()]
            for movie, speed in self._speeds:
                delay_ms = movie.nextFrameDelay() or 1
                slowed = max(1, round(speed * BUSY_ANIMATION_FPS * delay_ms / 1000))
                if slowed < speed:
                    movie.setSpeed(slowed)

    def release(self) -> None:
        """Such a job ended (GUI thread): the last one restores the animations."""
        self._jobs -= 1
        if self._jobs == 0:
            for movie, speed in self._speeds:
                try:
                    movie.setSpeed(speed)
                except RuntimeError:  # the movie was deleted meanwhile
                    pass
            self._speeds = []


def _running_movies() -> list:
    """The QMovies playing in QLabels of the application's top-level windows."""
    from qtpy.QtGui import QMovie
    from qtpy.QtWidgets import QApplication, QLabel

    movies = []
    for window in QApplication.topLevelWidgets():
        for label in window.findChildren(QLabel):
            movie = label.movie()
            if movie is not None and movie.state() == QMovie.MovieState.Running:
                movies.append(movie)
    return movies


#: The one instance: jobs of several widgets may overlap.
busy_animations = BusyAnimations()


# --------------------------------------------------------------------- LABELS_WARMUP
def warm_up_labels_display() -> bool:
    """Compute, off the GUI thread, the one-time part of napari's first Labels layer;
    call it from a worker before a job's first labels result. Returns whether it ran.

    Inserting the first Labels layer of a process took 0.3 to 0.5 s longer on the GUI
    thread than inserting later ones: its polygon overlay draws three antialiased vispy
    lines, and each builds a ``DashAtlas`` whose 13 dash patterns (1024 samples each, a
    Python loop) vispy computes once per process and then keeps in an ``lru_cache``.
    Building one here, in the worker thread, fills that cache before the result is
    inserted; once it is filled the call costs well under a millisecond.
    """
    if not enabled("LABELS_WARMUP"):
        return False
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()
    return True


# ------------------------------------------------------------------ DEFERRED_REPAINT
@contextmanager
def painted_on_next_pass(window: QWidget | None) -> Iterator[None]:
    """Hold back ``window``'s repaint until the event loop's next pass.

    napari builds a new layer's visuals, overlays and controls when it is added (75-85 ms
    for a Labels layer on the 2-core test machine with software OpenGL) and the canvas
    then draws it (about 40 ms). Drawn right after, in the same pass, the two made one
    120-126 ms stop of the viewer at the end of a first Segment run; with the repaint
    moved to the next pass, input and timers are served in between and the longest stop
    was 91 ms (docs/benchmarks/viewer.md). The window shows the layers one pass later.
    """
    if window is None or not window.updatesEnabled() or not enabled("DEFERRED_REPAINT"):
        yield
        return
    window.setUpdatesEnabled(False)
    try:
        yield
    finally:
        # A weak reference: the pending call must not keep a closed viewer alive.
        window_ref = weakref.ref(window)

        def paint_again() -> None:
            if (alive := window_ref()) is not None:
                try:
                    alive.setUpdatesEnabled(True)
                except RuntimeError:  # its Qt side was deleted meanwhile
                    pass

        QTimer.singleShot(0, paint_again)
