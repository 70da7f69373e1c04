"""WADO-RS retrieval of a series into the user's cache folder, with resume.

Layout: ``<cache>/dicomweb/<server key>/<StudyInstanceUID>/<SeriesInstanceUID>/`` with one
``<SOPInstanceUID>.dcm`` per instance. The server key is a hash of the server URL without
credentials. A series is fetched into ``<SeriesInstanceUID>.partial/`` (each instance
written to a temporary name and renamed, so a file there is always whole) and the folder is
renamed to its final name only when every instance the server lists is in it: a series
folder is complete or absent, and an interrupted retrieval resumes from the instances
already there.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import platformdirs
import pydicom

from napari_medattn.errors import Cancelled, PacsError
from napari_medattn.io.dicom_pixels import first_line
from napari_medattn.pacs.client import Connection, server_faults

PARTIAL_SUFFIX = ".partial"
#: Environment variable that moves the cache (tests, shared machines).
CACHE_ENV = "MEDATTN_CACHE_DIR"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder retrieved series go to: ``cache_dir``, else ``$MEDATTN_CACHE_DIR``, else
    the platform's user cache folder for napari-medattn; ``dicomweb`` inside it."""
    base = cache_dir or os.environ.get(CACHE_ENV) or platformdirs.user_cache_path(
        "napari-medattn")
    return Path(base) / "dicomweb"


def series_folder(connection: Connection, study_uid: str, series_uid: str,
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a complete series lives in the cache (it may not exist yet)."""
    key = hashlib.sha256(connection.display_url.encode()).hexdigest()[:16]
    return cache_root(cache_dir) / key / _safe_uid(study_uid) / _safe_uid(series_uid)


def _safe_uid(uid: str) -> str:
    if not uid or not all(c.isdigit() or c == "." for c in uid) or len(uid) > 64:
        raise PacsError(f"{uid!r} is not a DICOM UID.")
    return uid


def retrieve_series(connection: Connection, study_uid: str, series_uid: str, *,
                    cache_dir: str | os.PathLike | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    cancel: Callable[[], bool] | None = None) -> Path:
    """Bring a series into the cache (or find it there) and return its folder.

    Parameters
    ----------
    connection : Connection
    study_uid, series_uid : str
    cache_dir : path, optional
        See :func:`cache_root`.
    progress : callable, optional
        ``progress(done, total)`` in instances, after each one.
    cancel : callable, optional
        Checked between instances; when it returns True the retrieval stops with
        :class:`~napari_medattn.errors.Cancelled` and the next call resumes it.

    Returns
    -------
    Path
        The complete series folder (open it with :func:`napari_medattn.io.read`).

    Raises
    ------
    PacsError
        Server down, timeout, 401/403, no such series, or instances missing at the end.
    Cancelled
        ``cancel`` asked to stop.
    """
    final = series_folder(connection, study_uid, series_uid, cache_dir)
    if final.is_dir():
        return final
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    partial.mkdir(parents=True, exist_ok=True)
    client = connection.client()
    with server_faults(connection, "listing the series' instances"):
        listed = client.search_for_instances(study_uid, series_uid,
                                             fields=["SOPInstanceUID"], get_remaining=True)
    expected = {str(pydicom.Dataset.from_json(item).SOPInstanceUID) for item in listed}
    if not expected:
        raise PacsError(f"{connection.display_url} has no instances in series "
                        f"{series_uid}.")
    present = {path.stem for path in partial.glob("*.dcm")} & expected
    total = len(expected)
    if progress is not None:
        progress(len(present), total)
    with server_faults(connection, "retrieving the series"):
        if not present:
            # One streamed multipart request for a fresh series, kept as the bytes sent.
            instances = _series_parts(connection, study_uid, series_uid)
        else:
            instances = (client.retrieve_instance(study_uid, series_uid, uid)
                         for uid in sorted(expected - present))
        for instance in instances:
            if cancel is not None and cancel():
                raise Cancelled("Retrieval cancelled; the next retrieval of this series "
                                "resumes where it stopped.")
            uid = _sop_instance_uid(instance)
            if uid in present or uid not in expected:
                continue
            _write_instance(partial / f"{uid}.dcm", instance)
            present.add(uid)
            if progress is not None:
                progress(len(present), total)
    if present != expected:
        raise PacsError(f"{connection.display_url} sent {len(present)} of {total} instances "
                        f"of series {series_uid}; retrieve it again to fetch the rest.")
    os.replace(partial, final)
    return final


def _series_parts(connection: Connection, study_uid: str, series_uid: str
                  ) -> Iterator[bytes]:
    """The instances of a WADO-RS series request, as the Part 10 bytes the server sent.

    dicomweb-client's ``iter_series`` parses every part into a pydicom Dataset, which we
    then had to serialise again to cache it: retrieving and opening a 300-slice CT took
    2.3 times its ``retrieve_series`` (docs/benchmarks/dicom_seg.md). Its byte-level
    multipart decoder is private, so this is the same streaming split (RFC 2046) on the
    session the connection makes.
    """
    url = f"{connection.display_url}/studies/{study_uid}/series/{series_uid}"
    response = connection.session().get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"'},
        stream=True, timeout=connection.timeout_s)
    with response:
        response.raise_for_status()
        boundary = _boundary(response.headers.get("Content-Type", ""))
        if boundary is None:  # a single instance sent bare
            yield response.content
            return
        yield from split_multipart(response.iter_content(chunk_size=1 << 20), boundary)


def split_multipart(chunks: Iterable[bytes], boundary: bytes) -> Iterator[bytes]:
    """The bodies of a ``multipart/related`` message arriving in chunks of any size."""
    delimiter = b"\r\n--" + boundary
    data = bytearray(b"\r\n")  # so the first boundary matches the delimiter too
    search_from = 0
    for chunk in chunks:
        data += chunk
        while True:
            end = data.find(delimiter, search_from)
            if end < 0:
                break
            part = bytes(data[:end])
            del data[:end + len(delimiter)]
            search_from = 0
            body = part.find(b"\r\n\r\n")
            if body >= 0 and len(part) > body + 4:
                yield part[body + 4:]
        # A delimiter may straddle two chunks: search its last bytes again.
        search_from = max(0, len(data) - len(delimiter) + 1)


def _boundary(content_type: str) -> bytes | None:
    media_type, *parameters = (p.strip() for p in content_type.split(";"))
    if media_type.lower() != "multipart/related":
        return None
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "boundary":
            return value.strip('"').encode()
    return None


def _sop_instance_uid(instance: bytes | pydicom.Dataset) -> str:
    if isinstance(instance, pydicom.Dataset):
        return str(instance.SOPInstanceUID)
    try:
        header = pydicom.dcmread(io.BytesIO(instance), stop_before_pixels=True,
                                 specific_tags=["SOPInstanceUID"])
        return str(header.SOPInstanceUID)
    except Exception as error:  # a part that is not DICOM: the server's fault
        raise PacsError(f"The server sent a part that is not a DICOM instance "
                        f"({first_line(error)}).") from None


def _write_instance(path: Path, instance: bytes | pydicom.Dataset) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    if isinstance(instance, pydicom.Dataset):
        instance.save_as(temporary, enforce_file_format=True)
    else:
        temporary.write_bytes(instance)
    os.replace(temporary, path)


def clear_cache(cache_dir: str | os.PathLike | None = None) -> int:
    """Delete every retrieved series (complete and partial); return the bytes freed."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        return 0
    freed = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    shutil.rmtree(root)
    return freed
