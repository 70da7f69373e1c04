"""Cohort runs on Dask distributed: a task over hundreds of scans, resumable, one table.

Public API: :func:`run` (a manifest, a task, an output folder; a LocalCluster by default,
any Dask scheduler by address or client), :func:`read_manifest` and :class:`Case` (CSV,
MSD/nnU-Net folder, folder of scans), the tasks (:data:`TASKS`, :func:`make_task`,
:class:`CohortTask` to write another), and :func:`results_table`. See ``docs/cohort.md``.
"""

from napari_medattn.cohort.cluster import local_cluster
from napari_medattn.cohort.manifest import Case, read_manifest
from napari_medattn.cohort.results import results_table
from napari_medattn.cohort.run import CohortResult, run
from napari_medattn.cohort.tasks import TASKS, CaseOutput, CohortTask, make_task

__all__ = ["TASKS", "Case", "CaseOutput", "CohortResult", "CohortTask", "local_cluster",
           "make_task", "read_manifest", "results_table", "run"]
