"""Body-weight SUV for PET series, computed only when the DICOM tags allow it.

SUVbw = activity concentration (Bq/ml) x body weight (g) / injected dose (Bq), the dose
decayed from injection to the time the images are decay-corrected to (the series start
for ``DecayCorrection == "START"``, the injection itself for ``"ADMIN"``). When any tag
is missing or says otherwise, the activity is kept and the reason is returned.
"""

from __future__ import annotations

import math

from pydicom.dataset import Dataset

SECONDS_PER_DAY = 24 * 3600


def suv_bw_factor(header: Dataset) -> tuple[float | None, str]:
    """The factor that turns this PET series' Bq/ml into SUVbw, or ``None`` and why not.

    Parameters
    ----------
    header : pydicom Dataset
        Header of one image of the series (rescale already applied to the pixels).

    Returns
    -------
    factor : float or None
        Multiply activity (Bq/ml) by this to get SUVbw (g/ml); ``None`` when it cannot be
        computed safely.
    reason : str
        Empty when the factor is given; otherwise one sentence saying what is missing.
    """
    units = str(header.get("Units", "")).upper()
    if units != "BQML":
        return None, f"PET units are {units or 'not given'}, not BQML, so SUV is not computed."
    weight = _positive(header.get("PatientWeight"))
    if weight is None:
        return None, "PatientWeight is missing, so SUV is not computed (activity in Bq/ml)."
    info = header.get("RadiopharmaceuticalInformationSequence")
    if not info:
        return None, ("RadiopharmaceuticalInformationSequence is missing, so SUV is not "
                      "computed (activity in Bq/ml).")
    info = info[0]
    dose = _positive(info.get("RadionuclideTotalDose"))
    half_life = _positive(info.get("RadionuclideHalfLife"))
    if dose is None or half_life is None:
        return None, ("The injected dose or the half-life is missing, so SUV is not computed "
                      "(activity in Bq/ml).")
    correction = str(header.get("DecayCorrection", "")).upper()
    if correction == "ADMIN":
        elapsed = 0.0
    elif correction == "START":
        start = _seconds(header.get("SeriesTime")) or _seconds(header.get("AcquisitionTime"))
        injected = _seconds(info.get("RadiopharmaceuticalStartTime"))
        if injected is None and info.get("RadiopharmaceuticalStartDateTime"):
            injected = _seconds(str(info.RadiopharmaceuticalStartDateTime)[8:])
        if start is None or injected is None:
            return None, ("The series or injection time is missing, so SUV is not computed "
                          "(activity in Bq/ml).")
        elapsed = (start - injected) % SECONDS_PER_DAY  # a scan past midnight
    else:
        return None, (f"DecayCorrection is {correction or 'not given'} (not START or ADMIN), "
                      f"so SUV is not computed (activity in Bq/ml).")
    decayed_dose = dose * math.pow(2.0, -elapsed / half_life)
    return weight * 1000.0 / decayed_dose, ""


def _positive(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _seconds(value) -> float | None:
    """Seconds since midnight of a DICOM TM string ``HHMMSS.ffffff`` (or ``HH:MM:SS``)."""
    if value is None:
        return None
    text = str(value).strip().replace(":", "")
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds
