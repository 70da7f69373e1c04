"""Cohort runs on Dask distributed: a task over hundreds of scans, resumable, one table.

Public API: :func:`run` (a manifest, a task, an output folder; a LocalCluster by default,
any Dask scheduler by address or client), :func:`read_manifest` and :class:`Case` (CSV,
MSD/nnU-Net folder, folder of scans), the tasks (:data:`TASKS`, :func:`make_task`,
:class:`CohortTask` to write another), :func:`results_table`, :func:`read_results` and
:func:`load_case` (a case's scan and outputs, for the napari results browser). See
``docs/cohort.md``.
"""

from napari_medattn.cohort.cluster import local_cluster
from napari_medattn.cohort.manifest import Case, read_manifest
from napari_medattn.cohort.results import load_case, read_results, results_table
from napari_medattn.cohort.run import CohortResult, run
from napari_medattn.cohort.tasks import TASKS, CaseOutput, CohortTask, make_task

__all__ = ["TASKS", "Case", "CaseOutput", "CohortResult", "CohortTask", "local_cluster",
           "load_case", "make_task", "read_manifest", "read_results", "results_table",
           "run"]
