"""A real Orthanc with its DICOMweb plugin (napari_medattn.pacs.orthanc), started on a free
127.0.0.1 port with a temporary configuration and storage, and stopped after the session."""

import pytest

from napari_medattn.pacs.orthanc import local_orthanc, orthanc_available

USER, PASSWORD = "radiologist", "not-a-real-secret"


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """``(dicomweb_url, user, password)`` of a running Orthanc with basic authentication."""
    if not orthanc_available():
        pytest.skip("Orthanc with its DICOMweb plugin (Debian packages orthanc, "
                    "orthanc-dicomweb) is not installed; CI installs them")
    with local_orthanc(tmp_path_factory.mktemp("orthanc"), USER, PASSWORD) as url:
        yield url, USER, PASSWORD
