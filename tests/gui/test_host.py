"""The host workarounds (widgets/host.py): what each does, and that its off switch
(NAPARI_MEDATTN_NO_<NAME>=1) leaves the host alone."""

import gc
import threading

import numpy as np
import pytest
import torch
from qtpy.QtWidgets import QLabel

from napari_medattn.widgets import host
from napari_medattn.widgets import worker as worker_module
from napari_medattn.widgets.worker import add_layers, start_job


@pytest.fixture
def quiet(monkeypatch):
    """The worker's notifications go nowhere."""
    for kind in ("error", "info"):
        monkeypatch.setattr(worker_module, f"show_{kind}", lambda text: None)


def docked_label(viewer):
    """A plain widget docked in the viewer's window: its window() is napari's main window
    (found through Qt, napari's window attribute being private)."""
    docked = QLabel("a plugin's widget")
    viewer.window.add_dock_widget(docked)
    return docked


def spinner(viewer):
    """napari's "in progress" animation: the one Qt movie in the window's labels."""
    window = docked_label(viewer).window()
    (movie,) = [label.movie() for label in window.findChildren(QLabel)
                if label.movie() is not None]
    return movie


def frames_per_second(movie):
    return movie.speed() / 100 * 1000 / movie.nextFrameDelay()


def waiting_job(release, description="wait"):
    return start_job(lambda progress, cancel: release.wait(10), description=description,
                     on_result=lambda result: None)


def finish(qtbot, job):
    qtbot.waitUntil(lambda: job.finished, timeout=10_000)
    return job


def test_every_workaround_has_its_switch(monkeypatch):
    for workaround in host.WORKAROUNDS:
        variable = host.ENV_PREFIX + workaround.name
        monkeypatch.delenv(variable, raising=False)
        assert host.enabled(workaround.name)
        monkeypatch.setenv(variable, "0")
        assert host.enabled(workaround.name)
        monkeypatch.setenv(variable, "1")
        assert not host.enabled(workaround.name)
        assert workaround.targets and workaround.measured
    with pytest.raises(ValueError, match="Unknown host workaround"):
        host.enabled("NO_SUCH_THING")


def test_jobs_on_every_core_slow_the_spinner_until_the_last_ends(make_napari_viewer, qtbot,
                                                                 quiet, monkeypatch):
    movie = spinner(make_napari_viewer())
    monkeypatch.setattr(worker_module, "_usable_cores", lambda: 1)
    first, second = threading.Event(), threading.Event()
    jobs = [waiting_job(first, "first")]
    assert movie.state() == movie.MovieState.Running
    assert frames_per_second(movie) <= host.BUSY_ANIMATION_FPS + 0.5
    jobs.append(waiting_job(second, "second"))
    first.set()
    finish(qtbot, jobs[0])
    # The second job still computes: the spinner stays slow.
    assert frames_per_second(movie) <= host.BUSY_ANIMATION_FPS + 0.5
    second.set()
    finish(qtbot, jobs[1])
    assert movie.speed() == 100
    assert [job.outcome for job in jobs] == ["done", "done"]


@pytest.mark.parametrize("why", ["switched off", "the GUI has a core of its own"])
def test_the_spinner_keeps_its_speed(why, make_napari_viewer, qtbot, quiet, monkeypatch):
    movie = spinner(make_napari_viewer())
    if why == "switched off":
        monkeypatch.setattr(worker_module, "_usable_cores", lambda: 1)
        monkeypatch.setenv("NAPARI_MEDATTN_NO_SLOW_MOVIES", "1")
    else:
        monkeypatch.setattr(worker_module, "_usable_cores", lambda: 8)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    release = threading.Event()
    job = waiting_job(release)
    assert movie.state() == movie.MovieState.Running and movie.speed() == 100
    release.set()
    finish(qtbot, job)
    assert movie.speed() == 100


def test_freeze_startup_objects_freezes_once_and_not_when_off(monkeypatch):
    monkeypatch.setattr(host, "_startup_objects_frozen", False)
    gc.unfreeze()
    try:
        monkeypatch.setenv("NAPARI_MEDATTN_NO_GC_FREEZE", "1")
        assert not host.freeze_startup_objects()
        assert gc.get_freeze_count() == 0
        monkeypatch.delenv("NAPARI_MEDATTN_NO_GC_FREEZE")
        alive = [object() for _ in range(3)] + [[]]
        assert host.freeze_startup_objects()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        later = [[] for _ in range(1000)]
        assert not host.freeze_startup_objects()  # already done: no second freeze
        # No second freeze: the permanent generation does not grow (it may shrink, as
        # frozen objects that other threads drop are freed).
        assert gc.get_freeze_count() <= frozen
        assert alive and later
    finally:
        gc.unfreeze()


def test_added_layers_are_painted_on_the_next_event_loop_pass(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    docked = docked_label(viewer)
    window = docked.window()
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


def test_deferred_repaint_off_paints_at_once(make_napari_viewer, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDATTN_NO_DEFERRED_REPAINT", "1")
    viewer = make_napari_viewer()
    docked = docked_label(viewer)
    add_layers(viewer, [(np.ones((4, 5, 6), np.uint8), {"name": "l"}, "labels")], widget=docked)
    assert [layer.name for layer in viewer.layers] == ["l"]
    assert docked.window().updatesEnabled()


def test_labels_display_warm_up_fills_the_cache_napari_uses(monkeypatch):
    """After the warm-up, the dash patterns that each antialiased line of a Labels layer's
    overlay needs come from vispy's cache: nothing left to compute on the GUI thread.
    Turned off, it computes nothing."""
    from vispy.visuals.line import dash_atlas

    # vispy's private lru_cache is what the warm-up fills: no public way to look at it.
    dash_atlas._make_pattern.cache_clear()
    monkeypatch.setenv("NAPARI_MEDATTN_NO_LABELS_WARMUP", "1")
    assert not host.warm_up_labels_display()
    assert dash_atlas._make_pattern.cache_info().currsize == 0
    monkeypatch.delenv("NAPARI_MEDATTN_NO_LABELS_WARMUP")
    assert host.warm_up_labels_display()
    info = dash_atlas._make_pattern.cache_info()
    assert info.currsize == 13
    dash_atlas.DashAtlas()  # what each antialiased line of the labels overlay builds
    assert dash_atlas._make_pattern.cache_info().misses == info.misses
