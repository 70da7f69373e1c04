"""A real Ctrl-C: ``medattn cohort run`` in its own process group (as a terminal starts
it) gets SIGINT in the middle of the run, as every process of a terminal's foreground job
does, the workers included. It stops with one sentence and no traceback, leaves no
half-written file, and the same command then runs only the cases not yet finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import nibabel as nib
import pandas as pd
from cohort_data import make_scans

from napari_medattn.cli import main

# Enough work that the run is still going when Ctrl-C lands: the worker runs its queued
# cases until the cancel reaches it, and the calling process of a fresh installation can
# take seconds to get there (a first run of 40 tiny cases of tens of milliseconds each all
# finished first). Each scan here is tiled 3 x 3 x 3 (27 times the work of a small case).
CASES = 24
TILE = 3


def test_ctrl_c_stops_cleanly_and_the_same_command_runs_only_the_rest(
        client, tiny_model, tmp_path, capsys):
    make_scans(tmp_path / "scans", count=CASES, corrupt=None, tile=TILE)
    out = tmp_path / "out"
    command = ["cohort", "run", str(tmp_path / "scans"), "--task", "segment", "--out",
               str(out), "--model", str(tiny_model), "--device", "cpu"]
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_medattn.cli", *command, "--workers", "1",
         "--dashboard", ":0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # As a terminal starts it, whatever this process inherited: a shell that runs the
        # tests in the background sets SIGINT to "ignore", a child inherits that, and
        # Python then never raises KeyboardInterrupt (the run went on to the end).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("cases/*/case.json"))) < 2 and time.monotonic() < deadline \
                and process.poll() is None:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    finished = sorted(p.parent.name for p in out.glob("cases/*/case.json"))
    assert 2 <= len(finished) < CASES, f"the run was not stopped in the middle: {stderr}"
    assert process.returncode == 1
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"medattn: Stopped with {len(finished)} of {CASES} cases finished; they are kept, "
        f"and the same command runs the rest.")
    # Nothing half-written: no temporary left, every finished case's outputs read back,
    # and the table lists the rest as not run.
    assert not [p for p in out.rglob(".*") if p.is_file()]
    for name in finished:
        record = json.loads((out / "cases" / name / "case.json").read_text())
        assert record["details"]["status"] == "done"
        assert nib.load(out / "cases" / name / record["outputs"]["labels"]).get_fdata().size
    table = pd.read_csv(out / "results.csv").set_index("case")
    assert sorted(table.index[table["status"] == "done"]) == finished
    assert (table["status"] == "not run").sum() == CASES - len(finished)

    before = {name: (out / "cases" / name / "case.json").read_bytes() for name in finished}
    rerun_started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    capsys.readouterr()
    assert main([*command, "--scheduler", client.scheduler.address]) == 0
    assert (f"{CASES} of {CASES} cases done ({CASES - len(finished)} run now, "
            f"{len(finished)} already done, 0 failed)") in capsys.readouterr().out
    # The records say so: the finished cases' records are untouched, the others are new.
    for name, data in before.items():
        assert (out / "cases" / name / "case.json").read_bytes() == data
    rerun = [json.loads(p.read_text()) for p in out.glob("cases/*/case.json")
             if p.parent.name not in before]
    assert len(rerun) == CASES - len(finished)
    assert all(r["details"]["status"] == "done" and r["started_utc"] >= rerun_started
               for r in rerun)
