"""The shared worker helper: progress in the activity dock, Cancel, errors, all-or-none
layers, and torch threads that leave the GUI a core (its host workarounds: test_host.py)."""

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
    bar = job.progress_bar
    finish(qtbot, job)
    assert job.outcome == "done" and notes == []
    assert len(results) == 1 and np.array_equal(results[0], np.arange(3))
    assert seen["thread"] is not threading.main_thread()
    assert seen["torch_threads"] == min(gui_threads, worker_threads())
    assert torch.get_num_threads() == gui_threads
    # The activity-dock bar saw every unit of work and was closed.
    assert (bar.n, bar.total) == (3, 3)
    # Closed (tqdm disables a closed bar), which takes it off the activity dock; napari
    # keeps the dock's list of bars private (progress._all_instances).
    assert bar.disable


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
    qtbot.waitUntil(lambda: job.progress_bar.n >= 1, timeout=5000)
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
    job.progress_bar.cancel()  # what the activity dock's cancel button calls
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
