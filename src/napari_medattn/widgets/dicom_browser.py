"""The DICOM browser: search a DICOMweb server (PACS), open series, send SEGs back.

A thin layer over :mod:`napari_medattn.pacs`: the server (URL, no/basic/bearer
authentication, TLS verification on by default) and the search form collect parameters;
searching, retrieving (into the user's cache, with progress and Cancel; a cancelled
retrieval resumes next time) and storing run as jobs on the one Job helper; a retrieved
series becomes layers only once it is complete and read. A SEG series opens onto the open
scan it references (else by its own frame positions); "Send SEG + SR" writes the chosen
labels layer as a DICOM-SEG referencing its DICOM scan and its TID 1500 measurement report
(class volumes, lesions) and stores both (STOW-RS).
Credentials stay in the password fields and the job; they are never shown or logged.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from napari.layers import Labels
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

import napari_medattn
from napari_medattn.display.layers import GEOMETRY_KEY, layer_volume, volume_layer_data
from napari_medattn.errors import DimensionError, MedAttnError
from napari_medattn.io import read
from napari_medattn.io.dicom.seg import is_seg, read_seg_onto
from napari_medattn.io.dicom.sr import write_seg_with_report
from napari_medattn.models.registry import find_model
from napari_medattn.pacs import Connection, retrieve_series, search_series, store
from napari_medattn.widgets.choices import on_layers_changed, set_items
from napari_medattn.widgets.parts.jobs import JobWidget
from napari_medattn.widgets.parts.layers import DERIVED_KEY, INSPECT_KEY, RUN_KEY, scan_layers
from napari_medattn.widgets.worker import add_layers

AUTH_CHOICES = ("none", "basic", "bearer")
MODALITIES = ("", "CT", "MR", "PT", "SEG", "SR", "OT")
#: Result table columns: (row key, header).
COLUMNS = (("date", "Date"), ("patient_name", "Patient"), ("modality", "Modality"),
           ("instances", "Images"), ("description", "Series"))
TOOLTIPS = {
    "url": "DICOMweb root of the server, e.g. https://pacs.example.org/dicom-web",
    "auth": "none, basic (user and password) or bearer (an access token)",
    "secret": "Password or token; kept in memory for this session only, never logged",
    "verify": "Check the server's TLS certificate (leave on except for a test server)",
    "patient": "Patient name; * and ? are wildcards (Doe*)",
    "patient_id": "Patient ID",
    "date": "Study date YYYYMMDD, or a range YYYYMMDD-YYYYMMDD (either end open)",
    "modality": "Series modality (empty: any)",
    "search": "Search the server for series matching the form",
    "run": "Retrieve the selected series into the cache (resumes an interrupted one) and "
           "open it",
    "cancel": "Stop the retrieval; the next one resumes where it stopped",
    "labels": "A labels layer drawn on a scan opened from DICOM",
    "send": "Write the labels as a DICOM-SEG referencing their scan, with a DICOM SR of "
            "class volumes and lesions (diameter, centre), and store both on the server "
            "(STOW-RS)",
}


class DicomBrowserWidget(JobWidget):
    """Search a DICOMweb server, retrieve and open series, send labels back as DICOM-SEG."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS,
                         run_text="Retrieve and open")
        self.rows: list[dict] = []
        self.url = self._line("url", "http://localhost:8042/dicom-web")
        self.auth = QComboBox()
        self.auth.addItems(AUTH_CHOICES)
        self.auth.setToolTip(TOOLTIPS["auth"])
        self.user = self._line("auth", "")
        self.user.setPlaceholderText("user")
        self.secret = self._line("secret", "")
        self.secret.setEchoMode(QLineEdit.EchoMode.Password)
        self.verify = QCheckBox("Verify TLS certificate")
        self.verify.setChecked(True)
        self.verify.setToolTip(TOOLTIPS["verify"])
        server = QGroupBox("Server")
        server_form = QFormLayout(server)
        server_form.addRow("URL", self.url)
        server_form.addRow("Authentication", self.auth)
        server_form.addRow("User", self.user)
        server_form.addRow("Password/token", self.secret)
        server_form.addRow(self.verify)

        self.patient = self._line("patient", "")
        self.patient_id = self._line("patient_id", "")
        self.date = self._line("date", "")
        self.modality = QComboBox()
        self.modality.setEditable(True)
        self.modality.addItems(MODALITIES)
        self.modality.setToolTip(TOOLTIPS["modality"])
        self.search_button = QPushButton("Search")
        self.search_button.setToolTip(TOOLTIPS["search"])
        self.search_button.clicked.connect(self.search)
        self.jobs.follow(self.search_button)
        query = QGroupBox("Search")
        query_form = QFormLayout(query)
        query_form.addRow("Patient", self.patient)
        query_form.addRow("Patient ID", self.patient_id)
        query_form.addRow("Date", self.date)
        query_form.addRow("Modality", self.modality)
        query_form.addRow(self.search_button)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([header for _, header in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)  # the series description takes what is left
        self.table.verticalHeader().setVisible(False)
        self.table.itemSelectionChanged.connect(self.jobs.refresh)

        self.labels = QComboBox()
        self.labels.setToolTip(TOOLTIPS["labels"])
        self.send_button = QPushButton("Send SEG + SR")
        self.send_button.setToolTip(TOOLTIPS["send"])
        self.send_button.clicked.connect(self.send)
        self.jobs.follow(self.send_button)
        send_row = QHBoxLayout()
        send_row.addWidget(self.labels, 1)
        send_row.addWidget(self.send_button)

        self.setMinimumWidth(440)
        form = QFormLayout(self)
        form.addRow(server)
        form.addRow(query)
        form.addRow(self.table)
        form.addRow(self.jobs)
        form.addRow("Labels", send_row)
        form.addRow(self.status)
        on_layers_changed(napari_viewer, self._refresh)
        self._refresh()

    def _line(self, key: str, text: str) -> QLineEdit:
        line = QLineEdit(text)
        line.setToolTip(TOOLTIPS[key])
        return line

    # ------------------------------------------------------------------ state
    def _refresh(self, event: Any = None) -> None:
        set_items(self.labels, [layer.name for layer in self._dicom_labels()])
        self.jobs.refresh()

    def _dicom_labels(self) -> list[Labels]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Labels)
                and GEOMETRY_KEY in layer.metadata
                and layer.metadata[GEOMETRY_KEY].meta.get("format") == "dicom"]

    def ready(self) -> bool:
        return bool(self.table.selectionModel() and self.table.selectionModel().selectedRows())

    def connection(self) -> Connection:
        """The server connection the form describes (raises PacsError for a bad URL)."""
        kind = self.auth.currentText()
        secret = self.secret.text() or None
        return Connection(self.url.text().strip(),
                          username=self.user.text().strip() or None if kind == "basic"
                          else None,
                          password=secret if kind == "basic" else None,
                          token=secret if kind == "bearer" else None,
                          verify=self.verify.isChecked())

    # ------------------------------------------------------------------ actions
    def search(self) -> None:
        """Search series matching the form (in a job); the table shows the result."""
        connection = self.connection()
        criteria = dict(patient_name=self.patient.text().strip() or None,
                        patient_id=self.patient_id.text().strip() or None,
                        date=self.date.text().strip() or None,
                        modality=self.modality.currentText().strip() or None)

        def work(progress, cancel):
            return search_series(connection, **criteria)

        self.status.setText("Searching...")
        self.jobs.start(work, f"Search {connection.display_url}", self._show_rows)

    def _show_rows(self, rows: list[dict]) -> None:
        self.rows = rows
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, (key, _) in enumerate(COLUMNS):
                self.table.setItem(r, c, QTableWidgetItem(row[key]))
        self.status.setText(f"{len(rows)} series found.")
        self.jobs.refresh()

    def run(self):
        """Retrieve the selected series (progress, Cancel, resume) and open it as layers."""
        selected = self.table.selectionModel().selectedRows()
        row = self.rows[selected[0].row()]
        connection = self.connection()
        scans = open_scans(self.viewer)

        def work(progress, cancel):
            folder = retrieve_series(connection, row["study_uid"], row["series_uid"],
                                     progress=progress, cancel=cancel)
            return open_series(folder, scans)

        self.status.setText(f"Retrieving {row['description'] or row['series_uid']}...")
        return self.jobs.start(work, f"Retrieve {row['description'] or 'series'}",
                               self._show_layers)

    def _show_layers(self, layer_data: list[tuple]) -> None:
        add_layers(self.viewer, layer_data, widget=self)
        self.status.setText(f"Opened {', '.join(d[1]['name'] for d in layer_data)}.")

    def send(self) -> None:
        """Write the chosen labels layer as a DICOM-SEG and its measurement report (SR) and
        store both on the server."""
        layer = self.viewer.layers[self.labels.currentText()]
        volume = layer_volume(layer.data, layer.metadata, modality="SEG", name=layer.name)
        classes = layer_classes({"metadata": layer.metadata, "features": layer.features})
        algorithm = layer_algorithm(layer.metadata)
        connection = self.connection()

        def work(progress, cancel):
            with tempfile.TemporaryDirectory() as folder:
                paths = write_seg_with_report(Path(folder) / "seg.dcm",
                                              Path(folder) / "sr.dcm", volume,
                                              classes=classes, algorithm=algorithm)
                return store(connection, paths)

        self.status.setText(f"Sending {layer.name}...")
        self.jobs.start(work, f"Send {layer.name} as DICOM-SEG and SR",
                        lambda uids: self.status.setText(
                            f"Stored {layer.name} as DICOM-SEG with its measurement report "
                            f"(SR): {len(uids)} instances."))


def layer_classes(meta: dict) -> list | None:
    """Class names (and colours) of a labels layer: those of the segmentation it holds,
    else its ``class`` feature column, else None (the SEG names them ``class <n>``)."""
    geometry = meta.get("metadata", {}).get(GEOMETRY_KEY)
    if geometry is not None and geometry.meta.get("classes"):
        return list(geometry.meta["classes"])
    features = meta.get("features")
    if features is not None and "class" in features:
        return [str(name) for name in features["class"]]
    return None


def layer_algorithm(metadata: dict) -> dict | None:
    """Model, version and weights hash of the run that made a labels layer, else None
    (drawn by hand: the segments are MANUAL)."""
    run = metadata.get(RUN_KEY) or {}
    if not run.get("model"):
        return None
    try:
        card = find_model(run["model"]).card
    except MedAttnError:
        return {"name": run["model"]}
    return {"name": card.name, "version": napari_medattn.__version__,
            "weights_sha256": card.weights_sha256}


def layer_map_kind(metadata: dict, name: str = "This layer") -> str:
    """What a map layer made by Segment or the inspector holds, as a Parametric Map kind
    (:data:`napari_medattn.io.dicom.pmap.KINDS`): probability, uncertainty, attention,
    or explanation (the inspector's other maps).

    Raises
    ------
    DimensionError
        The layer is not such a map (a scan, labels, or an image from elsewhere).
    """
    tag = metadata.get(RUN_KEY) or metadata.get(INSPECT_KEY) or {}
    output = str(tag.get("output", ""))
    if not output or output == "labels":
        raise DimensionError(f"{name} is not a map computed by napari-medattn (probability, "
                             f"uncertainty, attention or explanation); save it as NIfTI.")
    words = output.split()
    for kind in ("probability", "uncertainty", "attention"):
        if kind in words:
            return kind
    return "explanation"


def open_scans(viewer: Any) -> dict:
    """The scans open in ``viewer`` that came from DICOM, by SeriesInstanceUID (their
    exact-geometry Volumes), for placing a SEG on the scan it references."""
    volumes = (layer.metadata[GEOMETRY_KEY] for layer in scan_layers(viewer))
    return {v.meta["series_uid"]: v for v in volumes if v.meta.get("series_uid")}


def open_series(folder: Path, scans: dict) -> list[tuple]:
    """Layer data for a retrieved series folder: images, or a SEG's labels on the open scan
    of the series it references (``scans`` maps series UIDs to their layer Volumes)."""
    files = sorted(folder.glob("*.dcm"))
    if files and all(is_seg(f) for f in files):
        layers = []
        for file in files:
            data, kwargs, kind = volume_layer_data(read_seg_onto(file, scans), "labels")
            kwargs["metadata"][DERIVED_KEY] = "dicom_browser"
            layers.append((data, kwargs, kind))
        return layers
    return [volume_layer_data(volume) for volume in read(folder)]
