"""The DICOMweb client against a real Orthanc: the round trip, resume, faults, the CLI."""

import http.server
import os
import socket
import threading

import numpy as np
import pytest
import torch
from nibabel.testing import data_path

from napari_medattn.cli import main
from napari_medattn.errors import Cancelled, PacsError
from napari_medattn.inference import segment
from napari_medattn.io import read_volume, write_dicom_series
from napari_medattn.io.dicom.seg import read_seg, write_seg
from napari_medattn.pacs import (
    Connection,
    clear_cache,
    retrieve_series,
    search_series,
    search_studies,
    store,
)
from napari_medattn.models import create
from napari_medattn.models.card import ModelCard, default_classes
from napari_medattn.pacs.cache import series_folder

PATIENT = {"PatientName": "Roundtrip^Test", "PatientID": "RT-1", "PatientBirthDate": "",
           "PatientSex": "O", "StudyDate": "20240102", "StudyID": "1", "AccessionNumber": "",
           "ReferringPhysicianName": ""}


@pytest.fixture(scope="module")
def uploaded(orthanc, tmp_path_factory):
    """The nibabel T1 written as an MR series, stored in Orthanc: (connection, Volume)."""
    url, user, password = orthanc
    folder = tmp_path_factory.mktemp("upload") / "t1"
    t1 = read_volume(os.path.join(data_path, "anatomical.nii"), modality="MR")
    files = write_dicom_series(folder, t1, series_description="T1 roundtrip",
                               series_number=3, patient=PATIENT)
    connection = Connection(url, username=user, password=password)
    assert len(store(connection, files)) == len(files)
    return connection, read_volume(folder)


def test_round_trip_search_retrieve_open_store_seg_and_read_back(uploaded, tmp_path):
    connection, original = uploaded
    (study,) = search_studies(connection, patient_name="Roundtrip*", modality="MR",
                              date="20240101-20240131")
    assert study["patient_id"] == "RT-1" and study["study_uid"] == original.meta["study_uid"]
    assert search_studies(connection, patient_name="Roundtrip*", date="20250101-") == []
    assert search_studies(connection, patient_name="Nobody*") == []
    (series,) = search_series(connection, study_uid=study["study_uid"], modality="MR")
    assert series["instances"] == str(original.spatial_shape[0])
    seen = []
    folder = retrieve_series(connection, study["study_uid"], series["series_uid"],
                             cache_dir=tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (original.spatial_shape[0],) * 2
    scan = read_volume(folder)
    np.testing.assert_array_equal(scan.data, original.data)
    np.testing.assert_allclose(scan.affine, original.affine)
    # Segment with a (tiny, untrained) model, store the SEG, find it, read it back.
    torch.manual_seed(0)
    config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8],
              "attention": "none"}
    card = ModelCard(name="tiny-unet", architecture="unet", config=config,
                     classes=default_classes(["background", "dark", "bright"]),
                     patch_size=(16, 16, 16), modality="MR",
                     normalization={"scheme": "zscore"}, training_data="none (untrained)",
                     license="BSD-3-Clause")
    result = segment(scan, create("unet", **config).eval(), card, device="cpu")
    labels = np.asarray(result.labels.data)
    assert labels.max() > 0
    seg_path = write_seg(tmp_path / "seg.dcm", result.labels, classes=card.classes,
                         algorithm={"name": card.name, "version": "test"})
    store(connection, [seg_path])
    (seg_series,) = search_series(connection, study_uid=study["study_uid"], modality="SEG")
    seg_folder = retrieve_series(connection, study["study_uid"], seg_series["series_uid"],
                                 cache_dir=tmp_path)
    (seg_file,) = seg_folder.glob("*.dcm")
    back = read_seg(seg_file, reference=read_volume(folder))
    np.testing.assert_array_equal(back.data, labels)
    assert [c[0] for c in back.meta["classes"]][1:] == ["dark", "bright"][:labels.max()]


def test_interrupted_retrieval_resumes_and_never_shows_a_partial_series(uploaded, tmp_path):
    connection, original = uploaded
    study, series = original.meta["study_uid"], original.meta["series_uid"]
    count = [0]

    def stop_after_five():
        count[0] += 1
        return count[0] > 5

    with pytest.raises(Cancelled, match="resumes"):
        retrieve_series(connection, study, series, cache_dir=tmp_path, cancel=stop_after_five)
    final = series_folder(connection, study, series, tmp_path)
    assert not final.exists()
    partial = final.with_name(final.name + ".partial")
    assert len(list(partial.glob("*.dcm"))) == 5
    seen = []
    folder = retrieve_series(connection, study, series, cache_dir=tmp_path,
                             progress=lambda d, t: seen.append(d))
    assert seen[0] == 5  # resumed, not restarted
    assert folder == final and not partial.exists()
    np.testing.assert_array_equal(read_volume(folder).data, original.data)
    assert clear_cache(tmp_path) > 0
    assert not final.exists()


def test_wrong_password_and_bearer_token_are_401_sentences(orthanc):
    url, user, password = orthanc
    with pytest.raises(PacsError, match=r"refused the credentials \(401") as error:
        search_studies(Connection(url, username=user, password="wrong-pass"))
    assert "wrong-pass" not in str(error.value)
    token = Connection(url, token="tok-123")
    assert token.session().headers["Authorization"] == "Bearer tok-123"
    assert "tok-123" not in repr(token)
    with pytest.raises(PacsError, match="401"):
        search_studies(token)


def test_credentials_in_the_url_never_reach_messages():
    connection = Connection("http://alice:hunter2@127.0.0.1:9/dicom-web")
    assert connection.display_url == "http://127.0.0.1:9/dicom-web"
    assert connection.session().auth == ("alice", "hunter2")
    assert connection.session().verify is True  # TLS verification on by default
    with pytest.raises(PacsError, match="cannot be reached") as error:
        search_studies(connection)
    assert "hunter2" not in str(error.value) and "alice" not in str(error.value)


class _Forbidden(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(403)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_forbidden_and_timeout_are_one_sentence_each():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(PacsError, match=r"403 Forbidden"):
            search_series(Connection(f"http://127.0.0.1:{server.server_port}/dicom-web"))
    finally:
        server.shutdown()
        server.server_close()
    # A server that accepts the connection and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        port = silent.getsockname()[1]
        with pytest.raises(PacsError, match=r"did not answer within 0.3 s"):
            search_studies(Connection(f"http://127.0.0.1:{port}/dicom-web", timeout_s=0.3))
    finally:
        silent.close()


def test_bad_url_and_date_are_one_sentence():
    with pytest.raises(PacsError, match="not an http"):
        Connection("ftp://example.org")
    with pytest.raises(PacsError, match="not a date"):
        search_studies(Connection("http://127.0.0.1:9/dicom-web"), date="last week")


def test_cli_search_get_put_and_clear_cache(uploaded, orthanc, tmp_path, capsys,
                                            monkeypatch):
    url, user, password = orthanc
    _, original = uploaded
    monkeypatch.setenv("MEDATTN_PACS_PASSWORD", password)
    base = ["--url", url, "--user", user]
    assert main(["pacs", "search", *base, "--patient", "Roundtrip*"]) == 0
    out = capsys.readouterr().out
    assert original.meta["study_uid"] in out and password not in out
    assert main(["pacs", "search", *base, "--study", original.meta["study_uid"],
                 "--modality", "MR"]) == 0
    assert original.meta["series_uid"] in capsys.readouterr().out
    cache = tmp_path / "cache"
    assert main(["pacs", "get", *base, "--study", original.meta["study_uid"], "--series",
                 original.meta["series_uid"], "--cache", str(cache)]) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    np.testing.assert_array_equal(read_volume(folder).data, original.data)
    assert main(["pacs", "put", *base, *sorted(str(p) for p in
                                                 read_volume(folder).meta["source_files"])[:2]]
                ) == 0
    assert "stored 2 instance(s)" in capsys.readouterr().out
    assert main(["pacs", "clear-cache", "--cache", str(cache)]) == 0
    assert not (cache / "dicomweb").exists()
    monkeypatch.setenv("MEDATTN_PACS_PASSWORD", "wrong")
    assert main(["pacs", "search", *base]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medattn: ") and "401" in err and "wrong" not in err


def test_multipart_split_gives_every_body_whatever_the_chunk_sizes():
    from napari_medattn.pacs.cache import split_multipart

    rng = np.random.default_rng(1)
    # Bodies with line breaks, blank lines and boundary-like text inside (RFC 2046 allows
    # all of them: only CRLF + "--" + the boundary ends a body).
    bodies = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() + b"\r\n\r\n--BOUNDARY-12"
              for n in (1, 700, 5000)]
    payload = b"preamble\r\n" + b"".join(
        b"--BOUNDARY-123\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n"
        for body in bodies) + b"--BOUNDARY-123--\r\nepilogue"
    for size in (1, 3, 7, 64, len(payload)):
        chunks = [payload[i:i + size] for i in range(0, len(payload), size)]
        assert list(split_multipart(chunks, b"BOUNDARY-123")) == bodies
