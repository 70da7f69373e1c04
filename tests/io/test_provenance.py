"""The one provenance record: valid against docs/provenance.schema.json, input hashes
that follow the bytes (not the names) of a file or DICOM series, atomic writing."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import jsonschema
import numpy as np
from nibabel.testing import data_path

import napari_medattn
from napari_medattn.io import read, read_volume, write_dicom_series
from napari_medattn.io.provenance import SCHEMA_VERSION, Provenance, files_sha256

ANATOMICAL = os.path.join(data_path, "anatomical.nii")
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "provenance.schema.json").read_text())


def _validate(record):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(record)


def test_a_record_without_model_is_valid_and_written_whole(tmp_path):
    record = Provenance("warp", parameters={"order": 1})
    record.add_input(ANATOMICAL, read_volume(ANATOMICAL))
    record.device, record.precision = "cpu", "float64"
    record.outputs["warped"] = "anatomical_warped.nii.gz"
    path = record.write(tmp_path / "anatomical_provenance.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anatomical_provenance.json"]
    written = json.loads(path.read_text())
    _validate(written)
    assert written["schema_version"] == SCHEMA_VERSION and written["model"] is None
    assert written["package_version"] == napari_medattn.__version__
    [entry] = written["inputs"]
    assert entry["sha256"] == hashlib.sha256(Path(ANATOMICAL).read_bytes()).hexdigest()
    assert entry["series_uid"] is None and entry["shape"] == [33, 41, 25]
    np.testing.assert_array_equal(entry["affine_lps"], read_volume(ANATOMICAL).affine)


def test_a_series_hash_follows_its_bytes_not_its_file_names(tmp_path):
    write_dicom_series(tmp_path / "a", read_volume(ANATOMICAL, modality="MR"),
                       series_description="T1", series_number=1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for number, file in enumerate(sorted((tmp_path / "b").iterdir())):
        file.rename(file.with_name(f"renamed_{99 - number}.dcm"))
    [a], [b] = read(tmp_path / "a"), read(tmp_path / "b")
    record = Provenance("segment")
    record.add_input(tmp_path / "a", a)
    record.add_input(tmp_path / "b", b)
    first, second = record.to_dict()["inputs"]
    _validate(record.to_dict())
    assert first["series_uid"] == a.meta["series_uid"]
    assert first["sha256"] == second["sha256"]
    # By definition: the SHA-256 of the files' sorted digests, one per line.
    digests = sorted(hashlib.sha256(Path(f).read_bytes()).hexdigest()
                     for f in a.meta["source_files"])
    assert first["sha256"] == hashlib.sha256("\n".join(digests).encode()).hexdigest()
    changed = sorted((tmp_path / "b").iterdir())[5]
    data = bytearray(changed.read_bytes())
    data[-1] ^= 1
    changed.write_bytes(bytes(data))
    assert files_sha256((tmp_path / "b").iterdir()) != first["sha256"]
