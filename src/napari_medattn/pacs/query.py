"""QIDO-RS searches for studies and series by patient, date and modality."""

from __future__ import annotations

import re

import pydicom

from napari_medattn.errors import PacsError
from napari_medattn.pacs.client import Connection, server_faults

_DATE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
#: Attributes asked for on top of the defaults, so the result rows are complete.
_STUDY_FIELDS = ("PatientName", "PatientID", "StudyDate", "StudyDescription",
                 "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "AccessionNumber")
_SERIES_FIELDS = ("PatientName", "PatientID", "StudyDate", "StudyInstanceUID",
                  "SeriesDescription", "SeriesNumber", "Modality",
                  "NumberOfSeriesRelatedInstances")


def _filters(patient_name: str | None, patient_id: str | None, date: str | None) -> dict:
    filters = {}
    if patient_name:
        filters["PatientName"] = patient_name
    if patient_id:
        filters["PatientID"] = patient_id
    if date:
        compact = date.replace(".", "").replace("/", "")
        if not _DATE.match(compact) or compact == "-":
            raise PacsError(f"{date!r} is not a date (YYYYMMDD) or range "
                            f"(YYYYMMDD-YYYYMMDD, either end open).")
        filters["StudyDate"] = compact
    return filters


def _text(dataset: pydicom.Dataset, keyword: str) -> str:
    value = dataset.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def search_studies(connection: Connection, *, patient_name: str | None = None,
                   patient_id: str | None = None, date: str | None = None,
                   modality: str | None = None, limit: int | None = None) -> list[dict]:
    """Studies matching every criterion given.

    Parameters
    ----------
    connection : Connection
    patient_name : str, optional
        DICOM name match; ``*`` and ``?`` are wildcards (``"Doe*"``).
    patient_id : str, optional
    date : str, optional
        Study date ``YYYYMMDD`` or range ``YYYYMMDD-YYYYMMDD`` (either end may be open).
    modality : str, optional
        A modality the study holds (``CT``, ``MR``, ``SEG``...).
    limit : int, optional
        At most this many rows.

    Returns
    -------
    list of dict
        ``study_uid``, ``patient_name``, ``patient_id``, ``date``, ``description``,
        ``modalities``, ``series`` (count), ``accession``.
    """
    filters = _filters(patient_name, patient_id, date)
    if modality:
        filters["ModalitiesInStudy"] = modality
    with server_faults(connection, "searching studies"):
        found = connection.client().search_for_studies(
            search_filters=filters, fields=list(_STUDY_FIELDS), limit=limit)
    rows = []
    for item in found:
        ds = pydicom.Dataset.from_json(item)
        rows.append({"study_uid": _text(ds, "StudyInstanceUID"),
                     "patient_name": _text(ds, "PatientName"),
                     "patient_id": _text(ds, "PatientID"),
                     "date": _text(ds, "StudyDate"),
                     "description": _text(ds, "StudyDescription"),
                     "modalities": _text(ds, "ModalitiesInStudy"),
                     "series": _text(ds, "NumberOfStudyRelatedSeries"),
                     "accession": _text(ds, "AccessionNumber")})
    return sorted(rows, key=lambda r: (r["date"], r["patient_name"]), reverse=True)


def search_series(connection: Connection, *, study_uid: str | None = None,
                  patient_name: str | None = None, patient_id: str | None = None,
                  date: str | None = None, modality: str | None = None,
                  limit: int | None = None) -> list[dict]:
    """Series matching every criterion given (within one study when ``study_uid`` is).

    Parameters are those of :func:`search_studies`; ``modality`` is the series' own.

    Returns
    -------
    list of dict
        ``study_uid``, ``series_uid``, ``modality``, ``description``, ``number``,
        ``instances`` (count), ``patient_name``, ``patient_id``, ``date``.
    """
    filters = _filters(patient_name, patient_id, date)
    if modality:
        filters["Modality"] = modality
    with server_faults(connection, "searching series"):
        found = connection.client().search_for_series(
            study_instance_uid=study_uid, search_filters=filters,
            fields=list(_SERIES_FIELDS), limit=limit)
    rows = []
    for item in found:
        ds = pydicom.Dataset.from_json(item)
        rows.append({"study_uid": _text(ds, "StudyInstanceUID") or (study_uid or ""),
                     "series_uid": _text(ds, "SeriesInstanceUID"),
                     "modality": _text(ds, "Modality"),
                     "description": _text(ds, "SeriesDescription"),
                     "number": _text(ds, "SeriesNumber"),
                     "instances": _text(ds, "NumberOfSeriesRelatedInstances"),
                     "patient_name": _text(ds, "PatientName"),
                     "patient_id": _text(ds, "PatientID"),
                     "date": _text(ds, "StudyDate")})
    return sorted(rows, key=lambda r: (r["study_uid"], _number(r["number"])))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")
