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
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import platformdirs
import pydicom

from napari_medattn.errors import Cancelled, PacsError
from napari_medattn.io.dicom.pixels import first_line
from napari_medattn.pacs.client import Connection, server_faults

PARTIAL_SUFFIX = ".partial"
#: SOP Instance UID in DICOM JSON (QIDO-RS answers).
SOP_INSTANCE_UID_TAG = "00080018"
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
    present = {path.stem for path in partial.glob("*.dcm")}
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The server lists the series (the instances it must send) while it streams them:
        # Orthanc takes about as long to answer the listing as to send a 300-image series.
        listing = pool.submit(_listed_instances, connection, study_uid, series_uid)
        if not present:
            # One streamed multipart request for a fresh series, kept as the bytes sent.
            _fetch(connection, partial, present, _series_parts(
                connection, study_uid, series_uid), listing, progress, cancel)
        expected = listing.result()
        for stray in present - expected:  # sent, or kept from before, but not listed
            (partial / f"{stray}.dcm").unlink(missing_ok=True)
        present &= expected
        if progress is not None:
            progress(len(present), len(expected))
        missing = sorted(expected - present)
        if missing:
            client = connection.client()
            _fetch(connection, partial, present, (
                client.retrieve_instance(study_uid, series_uid, uid) for uid in missing),
                listing, progress, cancel)
    if present != expected:
        raise PacsError(f"{connection.display_url} sent {len(present)} of "
                        f"{len(expected)} instances of series {series_uid}; retrieve it "
                        f"again to fetch the rest.")
    os.replace(partial, final)
    return final


def _listed_instances(connection: Connection, study_uid: str, series_uid: str) -> set[str]:
    """The SOP Instance UIDs the server lists for a series (QIDO-RS)."""
    with server_faults(connection, "listing the series' instances"):
        listed = connection.client().search_for_instances(
            study_uid, series_uid, fields=["SOPInstanceUID"], get_remaining=True)
    # Read from the DICOM JSON directly: building a pydicom Dataset per row cost a third
    # of a second per 300 instances.
    expected = {str(item[SOP_INSTANCE_UID_TAG]["Value"][0]) for item in listed
                if item.get(SOP_INSTANCE_UID_TAG, {}).get("Value")}
    if not expected:
        raise PacsError(f"{connection.display_url} has no instances in series "
                        f"{series_uid}.")
    return expected


def _fetch(connection: Connection, partial: Path, present: set[str],
           instances: Iterable[bytes | pydicom.Dataset], listing: Future,
           progress: Callable[[int, int], None] | None,
           cancel: Callable[[], bool] | None) -> None:
    """Write ``instances`` into ``partial`` as ``<SOPInstanceUID>.dcm``, adding each UID to
    ``present``; progress counts against the listing once it has answered."""
    with server_faults(connection, "retrieving the series"):
        for instance in instances:
            if cancel is not None and cancel():
                raise Cancelled("Retrieval cancelled; the next retrieval of this series "
                                "resumes where it stopped.")
            uid = _write_instance(partial, instance)
            if uid in present:
                continue
            present.add(uid)
            if progress is not None:
                total = len(listing.result()) if listing.done() else None
                progress(len(present), max(total or 0, len(present)))


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


def _write_instance(folder: Path, instance: bytes | pydicom.Dataset) -> str:
    """Write one instance into ``folder`` as ``<SOPInstanceUID>.dcm`` (whole or not at
    all) and return the UID."""
    temporary = folder / f".{threading.get_ident()}.tmp"
    try:
        if isinstance(instance, pydicom.Dataset):
            uid = str(instance.SOPInstanceUID)
            instance.save_as(temporary, enforce_file_format=True)
        else:
            temporary.write_bytes(instance)
            uid = _sop_instance_uid(temporary)
        os.replace(temporary, folder / f"{_safe_uid(uid)}.dcm")
    finally:
        temporary.unlink(missing_ok=True)
    return uid


def _sop_instance_uid(path: Path) -> str:
    """The SOP Instance UID of a Part 10 file, from its file meta information (a Part 10
    file repeats it there); reading only that group is 2.5 times faster than parsing the
    header for it."""
    try:
        uid = pydicom.filereader.read_file_meta_info(path).get("MediaStorageSOPInstanceUID")
        if not uid:
            uid = pydicom.dcmread(path, stop_before_pixels=True,
                                  specific_tags=["SOPInstanceUID"]).SOPInstanceUID
        return str(uid)
    except Exception as error:  # a part that is not DICOM: the server's fault
        raise PacsError(f"The server sent a part that is not a DICOM instance "
                        f"({first_line(error)}).") from None


def clear_cache(cache_dir: str | os.PathLike | None = None) -> int:
    """Delete every retrieved series (complete and partial); return the bytes freed."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        return 0
    freed = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    shutil.rmtree(root)
    return freed
