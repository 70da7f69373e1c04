"""The shared worker helper: progress in the activity dock, Cancel, errors, all-or-none
layers, and torch threads that leave the GUI a core."""

import threading
import time

import numpy as np
import pytest
import torch

from napari_medattn.errors import Cancelled, ReadError
from napari_medattn.widgets import worker as worker_module
from napari_medattn.widgets.worker import add_layers, start_job, worker_threads


@pytest.fixture
def notes(monkeypatch):
    """Notifications the helper shows, as (kind, text)."""
    shown = []
    monkeypatch.setattr(worker_module, "show_error", lambda text: shown.append(("error", text)))
    monkeypatch.setattr(worker_module, "show_info", lambda text: shown.append(("info", text)))
    return shown


def finish(qtbot, job):
    # Waiting on the worker's signal could miss one emitted before the wait began.
    qtbot.waitUntil(lambda: job.finished, timeout=10_000)
    return job


def test_result_progress_and_threads(qtbot, notes):
    seen = {}
    results = []

    def call(progress, cancel):
        seen["thread"] = threading.current_thread()
        seen["torch_threads"] = torch.get_num_threads()
        for done in range(1, 4):
            progress(done, 3)
        return np.arange(3)

    gui_threads = torch.get_num_threads()
    job = start_job(call, description="counting", on_result=results.append)
    bar = job._bar
    finish(qtbot, job)
    assert job.outcome == "done" and notes == []
    assert len(results) == 1 and np.array_equal(results[0], np.arange(3))
    assert seen["thread"] is not threading.main_thread()
    assert seen["torch_threads"] == min(gui_threads, worker_threads())
    assert torch.get_num_threads() == gui_threads
    # The activity-dock bar saw every unit of work and was closed.
    assert (bar.n, bar.total) == (3, 3)
    assert bar not in type(bar)._all_instances


def test_worker_threads_leave_a_core_above_two_cores():
    assert [worker_threads(n) for n in (1, 2, 3, 4, 16)] == [1, 2, 2, 3, 15]


def test_cancel_stops_between_units_and_skips_the_result(qtbot, notes):
    units = []
    results = []

    def call(progress, cancel):
        for done in range(1, 200):
            if cancel():
                raise Cancelled("stopped")
            units.append(done)
            progress(done, 200)
            time.sleep(0.01)
        return "all"

    job = start_job(call, description="long job", on_result=results.append)
    qtbot.waitUntil(lambda: job._bar.n >= 1, timeout=5000)
    job.cancel()
    finish(qtbot, job)
    assert job.outcome == "cancelled" and results == []
    assert len(units) < 199
    assert notes == [("info", "long job: cancelled.")]


def test_activity_dock_cancel_button_stops_the_job(qtbot, notes):
    def call(progress, cancel):
        while not cancel():
            time.sleep(0.005)
        raise Cancelled("stopped")

    job = start_job(call, description="dock", on_result=lambda r: None)
    job._bar.cancel()  # what the activity dock's cancel button calls
    finish(qtbot, job)
    assert job.outcome == "cancelled"


def test_library_errors_are_one_notification(qtbot, notes):
    results = []
    finished = []

    def call(progress, cancel):
        raise ReadError("The file scan.nii is not a NIfTI image.")

    job = start_job(call, description="read", on_result=results.append,
                    on_finished=finished.append)
    finish(qtbot, job)
    assert job.outcome == "failed" and results == []
    assert notes == [("error", "The file scan.nii is not a NIfTI image.")]
    assert finished == [job]


def test_errors_while_making_layers_are_reported(qtbot, notes):
    def on_result(result):
        raise ReadError("The result could not be shown.")

    job = finish(qtbot, start_job(lambda progress, cancel: 1, description="show",
                                  on_result=on_result))
    assert job.outcome == "failed"
    assert notes == [("error", "The result could not be shown.")]


def test_add_layers_is_all_or_none(make_napari_viewer):
    viewer = make_napari_viewer()
    good = (np.zeros((4, 5, 6), np.float32), {"name": "good"}, "image")
    bad = (np.zeros((4, 5, 6), np.float32), {"name": "bad", "no_such_option": 1}, "labels")
    with pytest.raises(TypeError):
        add_layers(viewer, [good, bad])
    assert len(viewer.layers) == 0
    layers = add_layers(viewer, [good, (np.ones((4, 5, 6), np.uint8), {"name": "l"}, "labels")])
    assert [layer.name for layer in viewer.layers] == ["good", "l"] == [l.name for l in layers]


def test_bugs_keep_their_traceback(qtbot, notes, monkeypatch):
    received = []
    monkeypatch.setattr(worker_module.notification_manager, "receive_error",
                        lambda *info: received.append(info))

    def call(progress, cancel):
        raise ZeroDivisionError("a bug, not bad input")

    job = finish(qtbot, start_job(call, description="bug", on_result=lambda r: None))
    assert job.outcome == "failed" and notes == []
    (kind, error, traceback), = received
    assert kind is ZeroDivisionError and traceback is not None


def spinner(viewer):
    """napari's "in progress" animation beside the activity button."""
    return viewer.window._qt_window._activity_dialog._toggleButton._inProgressIndicator.movie()


def frames_per_second(movie):
    return movie.speed() / 100 * 1000 / movie.nextFrameDelay()


def waiting_job(release, description="wait"):
    return start_job(lambda progress, cancel: release.wait(10), description=description,
                     on_result=lambda result: None)


def test_jobs_on_every_core_slow_the_spinner_until_the_last_ends(make_napari_viewer, qtbot,
                                                                 notes, monkeypatch):
    movie = spinner(make_napari_viewer())
    monkeypatch.setattr(worker_module, "_usable_cores", lambda: 1)
    first, second = threading.Event(), threading.Event()
    jobs = [waiting_job(first, "first")]
    assert movie.state() == movie.MovieState.Running
    assert frames_per_second(movie) <= worker_module.BUSY_ANIMATION_FPS + 0.5
    jobs.append(waiting_job(second, "second"))
    first.set()
    finish(qtbot, jobs[0])
    # The second job still computes: the spinner stays slow.
    assert frames_per_second(movie) <= worker_module.BUSY_ANIMATION_FPS + 0.5
    second.set()
    finish(qtbot, jobs[1])
    assert movie.speed() == 100
    assert [job.outcome for job in jobs] == ["done", "done"]


def test_jobs_that_leave_the_gui_a_core_leave_the_spinner_alone(make_napari_viewer, qtbot,
                                                                notes, monkeypatch):
    movie = spinner(make_napari_viewer())
    monkeypatch.setattr(worker_module, "_usable_cores", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    release = threading.Event()
    job = waiting_job(release)
    assert movie.state() == movie.MovieState.Running and movie.speed() == 100
    release.set()
    finish(qtbot, job)
    assert movie.speed() == 100


def test_freeze_startup_objects_freezes_once(monkeypatch):
    import gc

    monkeypatch.setattr(worker_module, "_startup_objects_frozen", False)
    gc.unfreeze()
    try:
        alive = [object() for _ in range(3)] + [[]]
        worker_module.freeze_startup_objects()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        later = [[] for _ in range(1000)]
        worker_module.freeze_startup_objects()  # already done: no second freeze
        assert gc.get_freeze_count() == frozen
        assert alive and later
    finally:
        gc.unfreeze()


def test_added_layers_are_painted_on_the_next_event_loop_pass(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QLabel

    viewer = make_napari_viewer()
    window = viewer.window._qt_window
    docked = QLabel("a plugin's widget")
    viewer.window.add_dock_widget(docked)
    assert docked.window() is window
    add_layers(viewer, [(np.ones((4, 5, 6), np.uint8), {"name": "l"}, "labels")], widget=docked)
    # Inserted now; the window repaints once the event loop has served what is waiting.
    assert [layer.name for layer in viewer.layers] == ["l"]
    assert not window.updatesEnabled()
    qtbot.waitUntil(window.updatesEnabled, timeout=2000)
    # A failed insertion gives the window its repaint back as well.
    with pytest.raises(TypeError):
        add_layers(viewer, [(np.zeros((4, 5, 6), np.uint8), {"no_such_option": 1}, "labels")],
                   widget=docked)
    qtbot.waitUntil(window.updatesEnabled, timeout=2000)
