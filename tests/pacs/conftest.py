"""A real Orthanc with its DICOMweb plugin, started on a free 127.0.0.1 port with a
temporary configuration and storage, and stopped after the tests that use it."""

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

PLUGIN_FOLDERS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
USER, PASSWORD = "radiologist", "not-a-real-secret"


def _dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_FOLDERS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*"))
        if found:
            return found[0]
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """``(dicomweb_url, user, password)`` of a running Orthanc with basic authentication."""
    executable = shutil.which("Orthanc")
    plugin = _dicomweb_plugin()
    if executable is None or plugin is None:
        pytest.skip("Orthanc with its DICOMweb plugin (Debian packages orthanc, "
                    "orthanc-dicomweb) is not installed; CI installs them")
    folder = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {
        "Name": "medattn-test", "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"), "HttpPort": port,
        "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(plugin)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpServerEnabled": True, "StableAge": 1, "HttpThreadsCount": 8,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen([executable, str(folder / "orthanc.json")], stdout=log,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{base}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail("Orthanc did not start within 10 s.")
        yield f"{base}/dicom-web", USER, PASSWORD
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
