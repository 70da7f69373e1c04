"""The memory planner plans against the worker's memory limit: the share a case gets
(closed form), a small budget that changes the segment task's plan (a smaller window batch,
the same labels) or refuses it in one sentence, the budget a real worker hands its task,
and a refused case recorded as such and retried by the next run."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from cohort_data import make_scans
from probe_task import ProbeTask
from test_run import make_cases

from napari_medattn.cohort import Case, make_task, run
from napari_medattn.cohort.cluster import memory_share
from napari_medattn.errors import InsufficientMemoryError
from napari_medattn.inference.window_options import MemoryBudget

MIB = 1024**2
GIB = 1024**3


def test_memory_share_is_the_limit_left_above_the_process_per_thread():
    # Dask restarts a worker past 95 % of its limit: 0.95 * 2 GiB - 500 MiB, for 2 threads.
    assert memory_share(2 * GIB, 2, 500 * MIB, 64 * GIB) == (int(0.95 * 2 * GIB) - 500 * MIB) // 2
    assert memory_share(2 * GIB, 1, 500 * MIB, 300 * MIB) == 300 * MIB  # free RAM is less
    assert memory_share(2 * GIB, 1, 3 * GIB, 64 * GIB) == 0  # already past it: nothing fits
    assert memory_share(2 * GIB, 1, 0, 64 * GIB, terminate=False) == 2 * GIB  # never restarted
    assert memory_share(None, 1, 0, 64 * GIB) is None  # no limit: plan against free RAM
    assert memory_share(0, 1, 0, 64 * GIB) is None


def test_a_small_budget_reduces_the_window_batch_or_refuses(tiny_model, tmp_path):
    scan = make_scans(tmp_path / "in", count=1, corrupt=None)[0]
    case = Case("c0", (scan,))
    task = make_task("segment", ["--model", str(tiny_model), "--device", "cpu"])

    def segment(memory: MemoryBudget | None, name: str):
        folder = tmp_path / name
        folder.mkdir()
        output = task.run_case(task.load(memory), case, folder)
        labels = np.asarray(nib.load(folder / output.outputs["labels"]).dataobj)
        return output.notes, labels

    # One 16^3 window at the planner's 1 kB of activations per voxel is 4 MiB (the input,
    # outputs and blending buffers of this small scan add well under 1 MiB): 6 MiB holds
    # one window of the batch of 4, 1 MiB not even that.
    roomy_notes, roomy = segment(None, "roomy")
    small_notes, small = segment(MemoryBudget(free_ram=6 * MIB), "small")
    assert not any("Batch reduced" in note for note in roomy_notes)
    assert "Batch reduced from 4 to 1 windows to fit in memory." in small_notes
    assert np.array_equal(small, roomy)  # the plan changes the batch, not the labels
    with pytest.raises(InsufficientMemoryError, match=r"^This segmentation needs about .* "
                                                      r"of RAM but only .* is free even "
                                                      r"with one window per batch"):
        segment(MemoryBudget(free_ram=1 * MIB), "tiny")


def test_a_worker_hands_its_task_its_share_of_its_memory_limit(client, tmp_path):
    limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
    result = run(make_cases(tmp_path / "in", 2), ProbeTask(tmp_path), tmp_path / "out",
                 client=client, progress=False)
    budgets = result.table["memory_budget"]
    # One thread per worker: at most 95 % of the limit, less the worker's own size.
    assert all(0 < budget < 0.95 * min(limits.values()) for budget in budgets)
    records = [run_record(tmp_path / "out", folder) for folder in result.table["folder"]]
    assert [r["details"]["memory_budget_bytes"] for r in records] == list(budgets)


def test_a_case_refused_for_memory_is_recorded_so_and_retried(client, tmp_path):
    cases = make_cases(tmp_path / "in", 3)
    first = run(cases, ProbeTask(tmp_path, too_big_case="c1"), tmp_path / "out",
                client=client, progress=False).table.set_index("case")
    assert first.loc["c1", "status"] == "failed"
    assert first.loc["c1", "error_kind"] == "memory"
    assert first.loc["c1", "error"] == "Case c1 does not fit in memory."
    (tmp_path / "grown").touch()  # e.g. rerun on workers with more memory
    again = run(cases, ProbeTask(tmp_path, too_big_case="c1"), tmp_path / "out",
                client=client, progress=False)
    assert again.ran == 1 and again.skipped == 2
    assert (again.table["status"] == "done").all()


def run_record(out, folder) -> dict:
    return json.loads((out / folder / "case.json").read_text())


def test_explain_plans_its_passes_against_the_budget_too(tiny_model, tmp_path):
    scan = make_scans(tmp_path / "in", count=1, corrupt=None)[0]
    task = make_task("explain", ["--model", str(tiny_model), "--device", "cpu"])
    (tmp_path / "out").mkdir()
    # Grad-CAM keeps activations for the backward pass: one 16^3 window needs more than
    # the 4 MiB a forward pass does, so 1 MiB fits nothing (the maps of an ample budget are
    # tested against the command's in test_tasks.py).
    with pytest.raises(InsufficientMemoryError, match=r"^This segmentation needs about .* "
                                                      r"of RAM but only .* is free"):
        task.run_case(task.load(MemoryBudget(free_ram=1 * MIB)), Case("c0", (scan,)),
                      tmp_path / "out")
