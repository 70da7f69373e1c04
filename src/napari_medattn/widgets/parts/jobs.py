"""Run and Cancel on the one Job helper, and the base every job widget is built on.

:class:`JobControls` runs one job at a time through
:func:`~napari_medattn.widgets.worker.start_job` and keeps a status line;
:class:`JobWidget` puts the viewer in radiological view, applies the host workarounds
(:mod:`~napari_medattn.widgets.host`) and owns a :class:`JobControls`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from napari_medattn.models.cache import CachedModel
from napari_medattn.widgets import host
from napari_medattn.widgets.radiology_view import install_radiology_view
from napari_medattn.widgets.worker import Job, JobFunction, start_job


class JobControls(QWidget):
    """Run and Cancel buttons on the one Job helper, and a status line: one job at a time.

    Parameters
    ----------
    run : callable
        What Run does (returns the job or None).
    ready : callable
        Whether Run may be pressed when no job runs (the widget's choices are complete).
    run_text : str
        The Run button's text.
    tooltips : tuple of str
        Tooltips of Run and Cancel.

    Attributes
    ----------
    job : Job or None
        The running (or last) job.
    status : QLabel
        A line for the widget's messages (placed by the widget).
    """

    #: Emitted after a job ended (every outcome), once the buttons are updated.
    idle = Signal()

    def __init__(self, run: Callable[[], Job | None], ready: Callable[[], bool], *,
                 run_text: str = "Run", tooltips: tuple[str, str] = ("", "")) -> None:
        super().__init__()
        self.job: Job | None = None
        self._ready = ready
        self._followers: list[QPushButton] = []
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.setToolTip(tooltips[0])
        self.cancel_button.setToolTip(tooltips[1])
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        self.run_button.clicked.connect(lambda: run())
        self.cancel_button.clicked.connect(self.cancel)

    @property
    def busy(self) -> bool:
        """Whether a job of this widget runs."""
        return self.job is not None and self.job.running

    def follow(self, button: QPushButton) -> None:
        """Enable ``button`` exactly when Run is (another action that starts a job)."""
        self._followers.append(button)

    def refresh(self) -> None:
        """Enable Run (and its followers) when idle and ready, Cancel while busy."""
        can_run = not self.busy and bool(self._ready())
        for button in (self.run_button, *self._followers):
            button.setEnabled(can_run)
        self.cancel_button.setEnabled(self.busy)

    def start(self, function: JobFunction, description: str,
              on_result: Callable[[Any], None], *, model: CachedModel | None = None) -> Job:
        """Start ``function(progress=..., cancel=...)`` as this widget's job
        (:func:`~napari_medattn.widgets.worker.start_job`); with ``model``, the work
        holds that shared network's lease while it runs."""
        if model is not None:
            def work(progress, cancel, _function=function):
                with model.lease(cancel):
                    return _function(progress=progress, cancel=cancel)
            function = work
        self.job = start_job(function, description=description, on_result=on_result,
                             on_finished=self._finished)
        self.refresh()
        return self.job

    def cancel(self) -> None:
        """Stop the running job at its next check; it adds no layer."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.setText("Cancelling...")

    def _finished(self, job: Job) -> None:
        self.refresh()
        self.idle.emit()


class JobWidget(QWidget):
    """Base of the job widgets: see the module's example.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    run : callable
        The widget's Run action.
    tooltips : mapping
        The widget's tooltips; ``run_key`` and ``"cancel"`` are used here.
    run_text, run_key : str
        The Run button's text and tooltip key.
    """

    def __init__(self, napari_viewer: Any, *, run: Callable[[], Job | None],
                 tooltips: Mapping[str, str], run_text: str = "Run",
                 run_key: str = "run") -> None:
        super().__init__()
        self.viewer = napari_viewer
        install_radiology_view(napari_viewer)
        host.freeze_startup_objects()
        self.jobs = JobControls(run, self.ready, run_text=run_text,
                                tooltips=(tooltips[run_key], tooltips["cancel"]))

    def ready(self) -> bool:
        """Whether the choices allow Run (override; Run is also off while a job runs)."""
        return True

    @property
    def job(self) -> Job | None:
        """The running (or last) job of this widget."""
        return self.jobs.job

    @property
    def run_button(self) -> QPushButton:
        return self.jobs.run_button

    @property
    def cancel_button(self) -> QPushButton:
        return self.jobs.cancel_button

    @property
    def status(self) -> QLabel:
        return self.jobs.status

    def cancel(self) -> None:
        """Stop the running job at its next check; it adds no layer."""
        self.jobs.cancel()
