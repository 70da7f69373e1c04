"""A DICOMweb server connection, its faults as one sentence each, and STOW-RS.

Credentials live only in the :class:`Connection` and the HTTP session made from it: the
dataclass hides them from ``repr``, :attr:`Connection.display_url` drops any ``user:pass@``
from the URL, and every error message names the server by that URL alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client import DICOMwebClient

from napari_medattn.errors import PacsError, ReadError

#: Seconds to wait for the server to answer (connect, then each read).
DEFAULT_TIMEOUT_S = 20.0
#: Back-off (ms) before the one retry of a failed request.
RETRY_WAIT_MS = 250


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where a DICOMweb server is and how to authenticate to it.

    Parameters
    ----------
    url : str
        DICOMweb root, e.g. ``https://pacs.example.org/dicom-web``.
    username, password : str, optional
        HTTP basic authentication.
    token : str, optional
        Bearer token (OAuth 2 / OpenID Connect access token); exclusive with basic.
    verify : bool or str
        TLS certificate verification: on by default; a path names a CA bundle. ``False``
        only for a test server you control.
    timeout_s : float
        Seconds to wait for a connection and for each answer.
    """

    url: str
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)
    verify: bool | str = True
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError(f"{self.display_url!r} is not an http(s) URL of a DICOMweb "
                            f"server.")
        if self.token and (self.username or self.password):
            raise PacsError("Give either a user name and password or a bearer token, not "
                            "both.")

    @property
    def display_url(self) -> str:
        """The URL without any credentials in it: safe for messages and records."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))

    def session(self) -> requests.Session:
        """A requests session with this connection's authentication and TLS policy."""
        session = _WildcardSession()
        session.verify = self.verify
        parts = urlsplit(self.url)
        username = self.username or parts.username
        password = self.password if self.password is not None else parts.password
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif username:
            session.auth = (username, password or "")
        return session

    def client(self) -> DICOMwebClient:
        """A dicomweb-client on :meth:`session` (the URL it gets carries no credentials)."""
        client = DICOMwebClient(self.display_url, session=self.session(),
                                timeout=self.timeout_s)
        # dicomweb-client retries every failure 5 times with back-off (31 s before "server
        # down" is said); one retry after RETRY_WAIT_MS keeps a busy server's 503 covered.
        client.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=RETRY_WAIT_MS)
        return client


class _WildcardSession(requests.Session):
    """Sends QIDO-RS wildcards as ``*`` and ``?``, not percent-encoded.

    dicomweb-client percent-encodes every query value; Orthanc (1.10 with DICOMweb 1.7)
    then matches ``%2A`` literally and a ``Doe*`` search finds nothing. Both characters
    are legal in a URL query (RFC 3986), and in a DICOM matching key they always mean a
    wildcard, so sending them bare changes nothing for servers that decode them.
    """

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        parts = urlsplit(request.url)
        if parts.query:
            query = parts.query.replace("%2A", "*").replace("%3F", "?")
            request.url = urlunsplit(parts._replace(query=query))
        return super().send(request, **kwargs)


@contextlib.contextmanager
def server_faults(connection: Connection, action: str) -> Iterator[None]:
    """Turn the HTTP failures of ``action`` on ``connection`` into one-sentence PacsErrors."""
    where = connection.display_url
    try:
        yield
    except requests.exceptions.SSLError:
        raise PacsError(f"The TLS certificate of {where} could not be verified while "
                        f"{action}; give the server's CA bundle.") from None
    except requests.exceptions.Timeout:
        raise PacsError(f"{where} did not answer within {connection.timeout_s:g} s while "
                        f"{action}.") from None
    except requests.exceptions.ConnectionError:
        raise PacsError(f"{where} cannot be reached (is the server running and the URL "
                        f"right?) while {action}.") from None
    except requests.exceptions.HTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise PacsError(f"{where} refused the credentials (401 Unauthorized) while "
                            f"{action}.") from None
        if status == 403:
            raise PacsError(f"{where} does not allow this account to do this (403 "
                            f"Forbidden) while {action}.") from None
        if status == 404:
            raise PacsError(f"{where} has nothing at that address (404 Not Found) while "
                            f"{action}; check the URL and the identifiers.") from None
        raise PacsError(f"{where} answered HTTP {status} while {action}.") from None


def store(connection: Connection, paths: Sequence[str | os.PathLike]) -> list[str]:
    """Send DICOM files (a SEG, an SR, ...) to the server with STOW-RS.

    All files are read first, so an unreadable one stops the upload before anything is
    sent; the server stores the request as a whole.

    Parameters
    ----------
    connection : Connection
    paths : sequence of path
        DICOM Part 10 files.

    Returns
    -------
    list of str
        SOP Instance UIDs the server confirmed.

    Raises
    ------
    ReadError
        A file is not DICOM.
    PacsError
        The server is down, timed out, refused, or failed some instances.
    """
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except (OSError, pydicom.errors.InvalidDicomError) as error:
            raise ReadError(f"{Path(path).name} is not a readable DICOM file ({error}).") \
                from None
    if not datasets:
        return []
    with server_faults(connection, "storing"):
        response = connection.client().store_instances(datasets)
    failed = response.get("FailedSOPSequence") or []
    if failed:
        raise PacsError(f"{connection.display_url} refused {len(failed)} of {len(datasets)} "
                        f"instance(s) while storing.")
    stored = response.get("ReferencedSOPSequence") or []
    return [str(item.ReferencedSOPInstanceUID) for item in stored]
