"""``medattn cohort run``: the task's own options, an existing scheduler by address, the
exit code and one sentence per failed case, and one sentence before any work for a bad
manifest or a bad task option."""

from __future__ import annotations

import pytest
from cohort_data import make_scans

from napari_medattn.cli import main
from napari_medattn.cli.cohort import TASK_NAMES
from napari_medattn.cohort import TASKS


def test_task_names_are_the_librarys():
    assert TASK_NAMES == tuple(TASKS)


def test_cohort_run_on_a_scheduler_by_address(client, tiny_model, tmp_path, capsys):
    scans = make_scans(tmp_path / "scans", count=3, corrupt="case_1")
    code = main(["cohort", "run", str(tmp_path / "scans"), "--task", "segment", "--out",
                 str(tmp_path / "out"), "--scheduler", client.scheduler.address,
                 "--model", str(tiny_model), "--device", "cpu", "--min-component-mm3", "8"])
    captured = capsys.readouterr()
    assert code == 1  # one case failed
    assert captured.err.count("medattn cohort: case_1: ") == 1
    assert "2 of 3 cases done (3 run now, 0 already done, 1 failed)" in captured.out
    assert (tmp_path / "out" / "cases" / "case_0" / "case_0_labels.nii.gz").is_file()
    assert len(scans) == 3
    cohort = (tmp_path / "out" / "cohort.json").read_text()
    assert '"min_component_mm3": 8.0' in cohort


def test_bad_manifest_is_one_sentence_and_no_work(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("id,path\nx,y\n")
    code = main(["cohort", "run", str(tmp_path / "m.csv"), "--task", "segment", "--out",
                 str(tmp_path / "out")])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        "medattn: The manifest m.csv lacks the column(s) case, image; it needs case, image "
        "and may have reference, moving.")
    assert not (tmp_path / "out").exists()


def test_a_bad_task_option_ends_with_the_tasks_usage(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("case,image\nx,y.nii.gz\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["cohort", "run", str(tmp_path / "m.csv"), "--task", "segment", "--out",
              str(tmp_path / "out"), "--overlap", "lots"])
    assert exit_info.value.code == 2
    assert "medattn cohort run --task segment: error: argument --overlap" in \
        capsys.readouterr().err
