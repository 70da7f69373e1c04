"""A throw-away local Orthanc with its DICOMweb plugin, for tests, benchmarks and demos.

:func:`local_orthanc` starts Orthanc on a free 127.0.0.1 port with a configuration and
storage in a folder of the caller's, basic authentication for one user, and stops it on
exit. It needs the Debian/Ubuntu packages ``orthanc`` and ``orthanc-dicomweb`` (or the
same files elsewhere); :func:`orthanc_available` says whether they are there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from napari_medattn.errors import PacsError

PLUGIN_FOLDERS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
STARTUP_TIMEOUT_S = 20.0


def dicomweb_plugin() -> Path | None:
    """The Orthanc DICOMweb plugin library, or None."""
    for folder in PLUGIN_FOLDERS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*"))
        if found:
            return found[0]
    return None


def orthanc_available() -> bool:
    """Whether the Orthanc executable and its DICOMweb plugin are installed."""
    return shutil.which("Orthanc") is not None and dicomweb_plugin() is not None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_orthanc(folder: str | os.PathLike, user: str, password: str) -> Iterator[str]:
    """Run Orthanc with DICOMweb on 127.0.0.1 while the block runs; yield its DICOMweb URL.

    Parameters
    ----------
    folder : path
        Holds the configuration, the storage and ``orthanc.log``.
    user, password : str
        The one account (HTTP basic authentication).

    Raises
    ------
    PacsError
        Orthanc is not installed, exits, or does not answer within 20 s.
    """
    executable, plugin = shutil.which("Orthanc"), dicomweb_plugin()
    if executable is None or plugin is None:
        raise PacsError("Orthanc with its DICOMweb plugin is not installed (Debian packages "
                        "orthanc and orthanc-dicomweb).")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = {
        "Name": "medattn-local", "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"), "HttpPort": port,
        "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {user: password},
        "Plugins": [str(plugin)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1, "HttpThreadsCount": 8,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    base = f"http://127.0.0.1:{port}"
    with open(folder / "orthanc.log", "w") as log:
        process = subprocess.Popen([executable, str(folder / "orthanc.json")], stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            _wait_until_up(process, base, (user, password), folder / "orthanc.log")
            yield f"{base}/dicom-web"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(process: subprocess.Popen, base: str, auth: tuple[str, str],
                   log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-500:].strip().splitlines()
            raise PacsError(f"Orthanc exited at start: {tail[-1] if tail else 'no log'}.")
        try:
            if requests.get(f"{base}/system", auth=auth, timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise PacsError(f"Orthanc did not answer within {STARTUP_TIMEOUT_S:g} s.")
