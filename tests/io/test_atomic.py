"""atomic_path: a result appears whole or not at all, and a failed write keeps the old file."""

import os

import pytest

from napari_medattn.io.atomic import atomic_path, write_text_atomically


def test_success_replaces_the_target_and_keeps_its_suffixes(tmp_path):
    target = tmp_path / "labels.nii.gz"
    target.write_text("old")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".nii.gz")
        assert temporary != target
        temporary.write_text("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):

    umask = os.umask(0o022)
    try:
        fresh = write_text_atomically(tmp_path / "fresh.txt", "a")
        assert fresh.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        write_text_atomically(kept, "new")
        assert kept.stat().st_mode & 0o777 == 0o640
        assert kept.read_text() == "new"
    finally:
        os.umask(umask)
