"""The parts every job widget is assembled from, one module a concept.

* :mod:`.jobs`: :class:`~.jobs.JobWidget`, the base of a job widget. It puts the viewer in
  radiological view, applies the host workarounds (:mod:`~napari_medattn.widgets.host`)
  and owns a :class:`~.jobs.JobControls`: Run and Cancel on the one Job helper
  (:func:`~napari_medattn.widgets.worker.start_job`), one job at a time, a status line.
* :mod:`.pickers`: :class:`~.pickers.ModelPicker`, a combo box of the built-in and user
  models (and folders the user opens), the model card as tooltip, and the chosen model
  loaded in the background through the process-wide
  :data:`~napari_medattn.models.cache.model_cache` (two widgets on one model hold it
  once); :func:`~.pickers.device_choice`, :func:`~.pickers.precision_choice`: the device
  and precision boxes.
* :mod:`.layers`: :func:`~.layers.scan_layers`, the one rule for which layers are scans;
  :data:`~.layers.DERIVED_KEY` and the other layer-metadata keys;
  :func:`~.layers.heat_map_layer_data` and :func:`~.layers.labels_layer_data`: how results
  are styled (and marked as derived).

A new job widget::

    from napari_medattn.widgets.parts.jobs import JobWidget
    from napari_medattn.widgets.parts.layers import heat_map_layer_data, scan_layers
    from napari_medattn.widgets.parts.pickers import ModelPicker, device_choice

    class DetectWidget(JobWidget):
        def __init__(self, napari_viewer):
            super().__init__(napari_viewer, run=self.run, tooltips=TOOLTIPS)
            self.image = QComboBox()
            self.model = ModelPicker(self.jobs, tooltip=TOOLTIPS["model"])
            self.device = device_choice()
            form = QFormLayout(self)
            form.addRow("Image", self.image)
            form.addRow("Model", self.model.row())
            form.addRow("Device", self.device)
            form.addRow(self.jobs)          # Run | Cancel
            form.addRow(self.status)
            on_layers_changed(napari_viewer, self._refresh)
            self._refresh()
            self.model.refresh()

        def _refresh(self, event=None):
            set_items(self.image, [layer.name for layer in scan_layers(self.viewer)])
            self.jobs.refresh()

        def ready(self) -> bool:        # Run is enabled when idle and this holds
            return bool(self.image.currentText()) and self.model.loaded is not None

        def run(self):
            layer = self.viewer.layers[self.image.currentText()]
            volume = layer_volume(layer.data, layer.metadata, name=layer.name)
            held = self.model.loaded
            def work(progress, cancel):
                boxes = detect(volume, held.module, held.card, progress=progress,
                               cancel=cancel)
                return [heat_map_layer_data(boxes.map, "detect", {})]
            return self.jobs.start(work, "Detect", self._show, model=held)

        def _show(self, layer_data):
            add_layers(self.viewer, layer_data, widget=self)

``jobs.start(..., model=held)`` runs the work holding the shared network's lease, so a
job of another widget on the same model waits for it (see
:mod:`napari_medattn.models.cache`). Combo boxes refill through
:func:`~napari_medattn.widgets.choices.set_items`; tooltips live in
:mod:`~napari_medattn.widgets.tooltips`.
"""
