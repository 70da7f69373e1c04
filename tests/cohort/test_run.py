"""The Dask side of cohort runs, with a cheap probe task: every case once, the task
loaded once per worker, reruns that do nothing, changed parameters, a worker that dies on
one case (KilledWorker is that case's error), a worker killed mid-run, Ctrl-C and resume,
an output folder of another cohort, an unreachable scheduler, and the calling process's
environment left as it was."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from cohort_data import write_csv
from probe_task import ProbeTask, lines

from napari_medattn.cohort import Case, run
from napari_medattn.cohort import cluster as cluster_module
from napari_medattn.errors import Cancelled, ClusterError, WriteError


def make_cases(folder: Path, count: int = 8) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for index in range(count):
        path = folder / f"scan_{index}.bin"
        path.write_bytes(bytes([index]) * (100 + index))
        cases.append(Case(f"c{index}", (path,)))
    return cases


def wait_idle(client, timeout_s: float = 30) -> None:
    """Until no worker thread runs a case: a cancelled case's thread runs on to its end
    (the scheduler forgets it at once; the worker's own state says when it is done)."""
    def executing(dask_worker) -> int:
        return len(dask_worker.state.executing)

    deadline = time.monotonic() + timeout_s
    while any(client.run(executing).values()) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_every_case_once_task_loaded_once_per_worker_rerun_does_nothing(client, tmp_path):
    cases = make_cases(tmp_path / "in")
    cases.append(Case("missing", (tmp_path / "in" / "nope.bin",)))
    inputs_before = {p: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    task = ProbeTask(tmp_path)
    result = run(cases, task, tmp_path / "out", client=client, progress=False)
    table = result.table.set_index("case")
    assert result.ran == 9 and result.skipped == 0 and result.failed == 1
    assert table.loc["missing", "status"] == "failed"
    assert table.loc["missing", "error"] == f"{tmp_path / 'in' / 'nope.bin'} does not exist."
    done = table[table["status"] == "done"]
    assert sorted(done.index) == [f"c{i}" for i in range(8)]
    assert list(done["bytes"]) == [100 + i for i in range(8)]
    for case in cases[:8]:  # outputs hold what the task computed, inputs are untouched
        copy = tmp_path / "out" / done.loc[case.case_id, "output_copy"]
        assert copy.read_bytes() == case.inputs[0].read_bytes()
    assert {p: p.read_bytes() for p in (tmp_path / "in").iterdir()} == inputs_before
    # Two workers, each loaded the task once (it may be that one worker did every case).
    loads = lines(tmp_path / "loads.txt")
    assert 1 <= len(loads) <= 2 and len(set(loads)) == len(loads)
    assert set(done["load_pid"].astype(int).astype(str)) <= set(loads)
    # Each worker's torch gets its share of the cores: 2 single-thread workers here.
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert set(done["torch_threads"]) == {share}
    assert set(done["omp"]) == {"1"}
    assert Counter(lines(tmp_path / "done.txt")) == Counter(f"c{i}" for i in range(8))
    for name in ("results.parquet", "results.csv", "summary.csv", "summary_runtime.png"):
        assert (tmp_path / "out" / name).is_file()

    started = time.perf_counter()
    again = run(cases, task, tmp_path / "out", client=client, progress=False)
    assert again.ran == 0 and again.skipped == 9  # the missing file's error stands
    assert Counter(lines(tmp_path / "done.txt")) == Counter(f"c{i}" for i in range(8))
    assert time.perf_counter() - started < 5

    # A changed input reruns that case only; a file that appears reruns its case.
    cases[2].inputs[0].write_bytes(b"changed")
    (tmp_path / "in" / "nope.bin").write_bytes(b"here now")
    third = run(cases, task, tmp_path / "out", client=client, progress=False)
    assert third.ran == 2 and third.failed == 0
    assert third.table.set_index("case").loc["c2", "bytes"] == len(b"changed")


def test_workers_load_the_task_as_it_arrives_and_the_first_cases_wait_for_it(client,
                                                                             tmp_path):
    import json

    task = ProbeTask(tmp_path)
    cluster_module.register_task(client, task)
    deadline = time.monotonic() + 60
    while len(lines(tmp_path / "loads.txt")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Both workers loaded it, and no case was submitted yet.
    assert len(set(lines(tmp_path / "loads.txt"))) == 2
    assert not lines(tmp_path / "done.txt")
    result = run(make_cases(tmp_path / "in", 6), task, tmp_path / "out", client=client,
                 progress=False)
    assert (result.table["status"] == "done").all()
    assert len(lines(tmp_path / "loads.txt")) == 2  # the cases used those loads
    records = [json.loads((tmp_path / "out" / folder / "case.json").read_text())["details"]
               for folder in result.table["folder"]]
    assert all(r["load_s"] == 0.0 for r in records)
    # Each worker's first case carries the warm-up's seconds, the others do not.
    warmed = [r["worker"] for r in records if "warm_up_s" in r]
    assert sorted(warmed) == sorted(set(result.table["worker"]))
    assert all(r["warm_up_s"] > 0 for r in records if "warm_up_s" in r)


def test_changed_parameter_is_refused_then_reruns_every_case(client, tmp_path):
    cases = make_cases(tmp_path / "in", 4)
    run(cases, ProbeTask(tmp_path), tmp_path / "out", client=client, progress=False)
    with pytest.raises(WriteError, match=r"other parameters \(value differ\); pass "
                                         r"--rerun-changed"):
        run(cases, ProbeTask(tmp_path, value=2), tmp_path / "out", client=client,
            progress=False)
    assert len(lines(tmp_path / "done.txt")) == 4  # refused before any work
    result = run(cases, ProbeTask(tmp_path, value=2), tmp_path / "out", client=client,
                 rerun_changed=True, progress=False)
    assert result.ran == 4
    assert list(result.table["bytes"]) == [2 * (100 + i) for i in range(4)]


def test_a_worker_that_dies_on_one_case_is_that_cases_error(client, tmp_path):
    cases = make_cases(tmp_path / "in", 4)
    result = run(cases, ProbeTask(tmp_path, kill_case="c1"), tmp_path / "out",
                 client=client, progress=False)
    table = result.table.set_index("case")
    assert table.loc["c1", "status"] == "failed"
    assert table.loc["c1", "error_kind"] == "killed"
    assert "died each time it was tried" in table.loc["c1", "error"]
    assert (table.drop("c1")["status"] == "done").all()
    # The next run tries the killed case again (it may have been a passing fault).
    wait_idle(client)
    again = run(cases, ProbeTask(tmp_path), tmp_path / "out", client=client,
                rerun_changed=True, progress=False)
    assert again.table.set_index("case").loc["c1", "status"] == "done"


def test_a_worker_killed_mid_run_leaves_every_case_done_exactly_once(client, tmp_path):
    cases = make_cases(tmp_path / "in", 8)
    killed = []

    def kill_one_worker(record: dict) -> None:
        if not killed:  # after the first case: kill the process of the other worker
            pids = client.run(os.getpid)
            victim = next(pid for address, pid in pids.items()
                          if address != record["details"]["worker"])
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    result = run(cases, ProbeTask(tmp_path, delay_s=0.5), tmp_path / "out", client=client,
                 progress=False, on_case=kill_one_worker)
    assert killed
    assert (result.table["status"] == "done").all(), result.table[["case", "error"]]
    assert Counter(lines(tmp_path / "done.txt")) == Counter(f"c{i}" for i in range(8))
    assert not [p for p in (tmp_path / "out").rglob(".*") if p.is_file()]


def test_ctrl_c_stops_cleanly_and_the_same_run_resumes(client, tmp_path):
    cases = make_cases(tmp_path / "in", 8)
    seen = []

    def interrupt(record: dict) -> None:
        seen.append(record["details"]["case"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(Cancelled, match=r"^Stopped with \d of 8 cases finished; they are "
                                        r"kept, and the same command runs the rest\.$"):
        run(cases, ProbeTask(tmp_path, delay_s=0.3), tmp_path / "out", client=client,
            progress=False, on_case=interrupt)
    wait_idle(client)
    stopped = pd.read_csv(tmp_path / "out" / "results.csv")
    assert (stopped["status"] == "not run").sum() >= 1
    result = run(cases, ProbeTask(tmp_path, delay_s=0.3), tmp_path / "out", client=client,
                 progress=False)
    assert (result.table["status"] == "done").all()
    assert result.skipped >= 2
    assert Counter(lines(tmp_path / "done.txt")) == Counter(f"c{i}" for i in range(8))


def test_output_folder_of_another_cohort_or_other_files_is_refused(client, tmp_path):
    cases = make_cases(tmp_path / "in", 2)
    run(cases, ProbeTask(tmp_path), tmp_path / "out", client=client, progress=False)

    class OtherTask(ProbeTask):
        name = "other"

    with pytest.raises(WriteError, match="holds the results of a probe cohort"):
        run(cases, OtherTask(tmp_path), tmp_path / "out", client=client, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(WriteError, match="holds files that are not a cohort's results"):
        run(cases, ProbeTask(tmp_path), tmp_path / "mine", client=client, progress=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_unreachable_scheduler_is_one_sentence_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT_S", 1)
    cases = make_cases(tmp_path / "in", 2)
    with pytest.raises(ClusterError, match=r"^Cannot reach the Dask scheduler at "
                                           r"tcp://127.0.0.1:9 "):
        run(cases, ProbeTask(tmp_path), tmp_path / "out", scheduler="tcp://127.0.0.1:9",
            progress=False)
    assert not (tmp_path / "out" / "cases").exists()


def test_a_gpu_task_on_a_cluster_without_gpus_is_refused(client, tmp_path):
    class GpuProbe(ProbeTask):
        def resources(self) -> dict:
            return {"GPU": 1}

    with pytest.raises(ClusterError, match="No worker of the given client's cluster offers "
                                           "GPU=1"):
        run(make_cases(tmp_path / "in", 1), GpuProbe(tmp_path), tmp_path / "out",
            client=client, progress=False)


def test_the_local_cluster_leaves_the_calling_process_environment_alone(tmp_path):
    before, threads = dict(os.environ), torch.get_num_threads()
    during = []
    cases = make_cases(tmp_path / "in", 2)
    result = run(cases, ProbeTask(tmp_path), tmp_path / "out", workers=1, progress=False,
                 cluster_options={"dashboard_address": ":0"},
                 on_case=lambda _: during.append(dict(os.environ)))
    assert dict(os.environ) == before
    assert during and all(env == before for env in during)
    assert torch.get_num_threads() == threads
    # ... while the worker itself ran with one thread per core it owns.
    assert set(result.table["omp"]) == {"1"}


def test_csv_manifest_runs_with_paths_relative_to_it(client, tmp_path):
    make_cases(tmp_path / "in", 2)
    manifest = write_csv(tmp_path / "cases.csv", [("a", "in/scan_0.bin", ""),
                                                  ("b", "in/scan_1.bin", "")])
    result = run(manifest, ProbeTask(tmp_path), tmp_path / "out", client=client,
                 progress=False)
    assert list(result.table["case"]) == ["a", "b"]
    assert list(result.table["bytes"]) == [100, 101]
