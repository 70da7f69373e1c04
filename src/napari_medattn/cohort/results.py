"""The cohort's one results table, its summary statistics and plots.

The table is rebuilt from the case records (``cases/<case>/case.json``) after every run,
so it always covers the whole manifest, whichever run did each case. Columns:

* ``case``, ``status`` (``done``, ``failed``, ``not run``), ``error`` (one sentence),
  ``error_kind`` (``input``, ``crash``, ``killed``), ``runtime_s``, ``worker``;
* the task's figures: ``volume_ml_<class>`` (mL), ``dice_<class>``, ``hd95_mm_<class>``
  (mm) where a reference exists, ``maps`` for explain, ...;
* ``folder`` (the case's folder, relative to the cohort folder) and ``output_<kind>``
  (each output file, relative to the cohort folder).

Written as ``results.parquet`` and ``results.csv``; ``summary.csv`` holds count, mean,
standard deviation, median, minimum and maximum of each figure over the done cases; the
plots are ``summary_volumes.png`` (volume per class), ``summary_dice.png`` (Dice box plot
per class) and ``summary_runtime.png`` (runtime per case). Every file is written
atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medattn.cohort.manifest import Case
from napari_medattn.cohort.records import CASES_DIR, DONE, NOT_RUN, first_line, read_record
from napari_medattn.errors import ReadError

RESULTS = "results"
SUMMARY = "summary.csv"
#: Leading columns, in order; figures and outputs follow.
BASE_COLUMNS = ("case", "status", "error", "error_kind", "runtime_s", "worker", "folder")
PLOTS = {"volumes": "volume_ml_", "dice": "dice_", "runtime": "runtime_s"}


def results_table(out: str | os.PathLike, cases: Sequence[Case], folders: dict[str, str]):
    """The results table (pandas.DataFrame) of ``cases`` from their records in ``out``."""
    import pandas as pd

    out = Path(out)
    rows = []
    for case in cases:
        folder = f"{CASES_DIR}/{folders[case.case_id]}"
        record = read_record(out / folder)
        if record is None:
            rows.append({"case": case.case_id, "status": NOT_RUN, "folder": folder})
            continue
        details = record["details"]
        row: dict[str, Any] = {"case": case.case_id, "status": details.get("status"),
                               "error": details.get("error"),
                               "error_kind": details.get("error_kind"),
                               "runtime_s": record.get("runtime_s"),
                               "worker": details.get("worker"), "folder": folder}
        row.update(details.get("figures") or {})
        row.update({f"output_{kind}": f"{folder}/{name}"
                    for kind, name in (record.get("outputs") or {}).items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in BASE_COLUMNS:
        if column not in table:
            table[column] = None
    figures = sorted(c for c in table.columns if c not in BASE_COLUMNS
                     and not c.startswith("output_"))
    outputs = sorted(c for c in table.columns if c.startswith("output_"))
    table = table[list(BASE_COLUMNS) + figures + outputs]
    for column in ("error", "error_kind", "worker"):
        table[column] = table[column].astype("string")
    return table


def write_results(out: str | os.PathLike, cases: Sequence[Case], folders: dict[str, str]
                  ) -> tuple[Any, list[Path]]:
    """Write the table (Parquet and CSV), the summary and the plots; returns
    ``(table, files written)``.

    When the table is the one already written (a rerun that found everything done), the
    files are left as they are: a rerun that has nothing to do writes nothing.
    """
    from napari_medattn.io.atomic import atomic_path, write_text_atomically

    out = Path(out)
    table = results_table(out, cases, folders)
    text = table.to_csv(index=False, lineterminator="\n")
    csv, parquet = out / f"{RESULTS}.csv", out / f"{RESULTS}.parquet"
    plots = [out / f"summary_{name}.png" for name in PLOTS]
    if csv.is_file() and parquet.is_file() and csv.read_text(encoding="utf-8") == text:
        return table, [parquet, csv, out / SUMMARY, *(p for p in plots if p.is_file())]
    with atomic_path(parquet) as temporary:
        table.to_parquet(temporary, index=False)
    summary = summary_statistics(table)
    written = [parquet, write_text_atomically(
        out / SUMMARY, lambda f: summary.to_csv(f, lineterminator="\n"))]
    written += write_plots(table, out)
    # The CSV last: it is what says the set is complete (see the check above).
    return table, [written[0], write_text_atomically(csv, text), *written[1:]]


def figure_columns(table) -> list[str]:
    """The numeric figure columns of a results table, runtime included."""
    from pandas.api.types import is_numeric_dtype

    return [c for c in table.columns if (c == "runtime_s" or c not in BASE_COLUMNS)
            and not c.startswith("output_") and is_numeric_dtype(table[c])]


def summary_statistics(table):
    """Count, mean, sd, median, min and max of each figure over the done cases."""
    import pandas as pd

    done = table[table["status"] == DONE]
    columns = figure_columns(table)
    if done.empty or not columns:
        return pd.DataFrame(columns=["count", "mean", "sd", "median", "min", "max"])
    values = done[columns].replace([np.inf, -np.inf], np.nan)
    return pd.DataFrame({"count": values.count(), "mean": values.mean(),
                         "sd": values.std(), "median": values.median(),
                         "min": values.min(), "max": values.max()})


def write_plots(table, out: Path) -> list[Path]:
    """The summary plots as PNG (only those the table has figures for)."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed; a GUI backend already set stays
    from matplotlib.figure import Figure

    from napari_medattn.io.atomic import atomic_path

    done = table[table["status"] == DONE]
    written = []
    for name, prefix in PLOTS.items():
        columns = [c for c in figure_columns(table) if c.startswith(prefix)]
        if done.empty or not columns:
            continue
        figure = Figure(figsize=(max(4.0, 1.2 * len(columns) + 2), 3.2), dpi=100)
        axes = figure.add_subplot()
        if name == "runtime":
            axes.plot(np.arange(len(done)), done["runtime_s"].to_numpy(float), ".")
            axes.set_xlabel("case (in manifest order)")
            axes.set_ylabel("runtime (s)")
            axes.set_title(f"Runtime per case ({len(done)} cases)")
        else:
            data = [done[c].replace([np.inf, -np.inf], np.nan).dropna().to_numpy(float)
                    for c in columns]
            axes.boxplot(data, tick_labels=[c.removeprefix(prefix) for c in columns])
            axes.set_ylabel("volume (mL)" if name == "volumes" else "Dice")
            axes.set_title("Volume per class" if name == "volumes" else "Dice per class")
            axes.tick_params(axis="x", labelrotation=30)
        figure.tight_layout()
        path = out / f"summary_{name}.png"
        with atomic_path(path) as temporary:
            figure.savefig(temporary)
        written.append(path)
    return written


def read_results(out: str | os.PathLike):
    """The results table of a cohort folder (``results.parquet``, else ``results.csv``).

    Raises
    ------
    ReadError
        The folder holds neither, or the file cannot be read.
    """
    import pandas as pd

    out = Path(out)
    for name, reader in ((f"{RESULTS}.parquet", pd.read_parquet),
                         (f"{RESULTS}.csv", pd.read_csv)):
        if (out / name).is_file():
            try:
                return reader(out / name)
            except (OSError, ValueError) as error:
                raise ReadError(f"{out / name} cannot be read ({first_line(error)}).") from None
    raise ReadError(f"{out} holds no cohort results ({RESULTS}.parquet or {RESULTS}.csv).")


def load_case(out: str | os.PathLike, case: str):
    """A case's scan and its NIfTI outputs, read for display.

    Parameters
    ----------
    out : path
        The cohort folder.
    case : str
        The case id (a row of the results table).

    Returns
    -------
    scan : Volume
        The case's (first) input, from the path its record names.
    outputs : dict of str to Volume
        Each NIfTI output by kind (``labels``, ``probability_1_...``, maps), with
        ``labels`` as modality ``"SEG"`` and the model's class names and colours.

    Raises
    ------
    ReadError
        Unknown case, no record, or a scan that cannot be read any more (moved, corrupt).
    """
    from napari_medattn.io import read_volume

    out = Path(out)
    table = read_results(out)
    rows = table[table["case"].astype(str) == str(case)]
    if rows.empty:
        raise ReadError(f"The cohort in {out} has no case {case!r}.")
    record = read_record(out / str(rows.iloc[0]["folder"]))
    if record is None or not record.get("inputs"):
        raise ReadError(f"Case {case!r} has no record in {out}; it has not run yet.")
    scan = read_volume(record["inputs"][0]["path"])
    folder = out / str(rows.iloc[0]["folder"])
    # The model's classes name and colour the label map as the Segment widget does.
    card = (record.get("model") or {}).get("card") or {}
    classes = [(c["name"], c["color"]) for c in card.get("classes", [])]
    outputs = {}
    for kind, name in (record.get("outputs") or {}).items():
        if str(name).endswith((".nii.gz", ".nii")) and (folder / name).is_file():
            outputs[kind] = read_volume(folder / name, modality="SEG" if kind == "labels"
                                        else None)
            if kind == "labels" and classes:
                outputs[kind].meta["classes"] = classes
    return scan, outputs
