"""The viewer during a Segment run: event-loop gaps, and the run's time against the CLI.

Side by side in one run, on the same file and model:

* **CLI**: ``medattn segment FILE --out TMP --model MODEL --device cpu`` in a subprocess;
  its time is the ``runtime_s`` of the provenance json (the segmentation call alone, no
  start-up, no reading, no writing), and ``total_runtime_s`` (with writing) is printed
  too.
* **Widget**: a real napari viewer (Xvfb when there is no display) with the scan as a
  layer and the Segment widget docked; a Qt timer ticks every ``--tick-ms`` ms on the GUI
  thread and records its times. The run is timed from the click on Run until the result
  layers and the statistics table are in the viewer. The longest interval between two
  ticks during the run is how long the viewer could not react (ideal: the tick
  interval; napari's own redraws of the progress bar are included, as a user sees them).

The model is the first built-in MR model (``medattn models``) or, when none is installed,
a stand-in: an untrained attention-gated U-Net (channels 8-16-32, 64^3 windows) with the
same cost per window as a trained one of that size. ``--compare-threads`` also runs the widget
with torch using every core (no core left to the GUI), to show what leaving one costs
and buys. ``--no-warm-up`` turns off the widget's warm-up of the labels display (see
:func:`napari_medattn.widgets.host.warm_up_labels_display`), to measure the first
run's insertion gap without it. Runs alternate CLI / widget ``--repeats`` times; the
figures are medians.

``--insert-ab PAIRS`` instead times only the first Labels layer's insertion in fresh
viewers, alternating without and with the warm-up (single insertions on a loaded machine
vary a lot; pairs of fresh processes give a fair comparison).

Run: ``.venv/bin/python benchmarks/bench_viewer_responsiveness.py [--repeats 2]``
Prints ``FIGURE viewer_max_tick_gap <ms> ms`` and ``FIGURE viewer_run_vs_cli <r> ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import napari_medattn
from napari_medattn.io import read_volume
from napari_medattn.models import create
from napari_medattn.models.card import ClassInfo, ModelCard
from napari_medattn.models.registry import builtin_models, save_model

SAMPLE = Path(napari_medattn.__file__).parent / "sample_data" / "mni152_t1.nii.gz"


def stand_in_model(folder: Path) -> Path:
    """An untrained 4-class attention-gated U-Net saved as a model folder."""
    import torch

    torch.manual_seed(0)
    config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4,
              "channels": [8, 16, 32], "attention": "gate"}
    card = ModelCard(
        name="bench-unet", architecture="unet", config=config, modality="MR",
        classes=[ClassInfo("background", "#000000"), ClassInfo("CSF", "#3399ff"),
                 ClassInfo("grey matter", "#ff3333"), ClassInfo("white matter", "#ffee00")],
        patch_size=(64, 64, 64), normalization={"scheme": "zscore"},
        training_data="none: untrained stand-in for timing")
    return save_model(create("unet", **config).eval(), card, folder / "bench-unet")


def choose_model(tmp: Path) -> Path:
    for entry in builtin_models():
        if entry.card.modality == "MR" and len(entry.card.patch_size) == 3:
            return entry.path
    return stand_in_model(tmp)


def run_cli(model: Path, out: Path) -> tuple[float, float]:
    """(runtime_s, total_runtime_s) of ``medattn segment`` on the sample."""
    command = [sys.executable, "-m", "napari_medattn.cli", "segment", str(SAMPLE),
               "--out", str(out), "--model", str(model), "--device", "cpu"]
    subprocess.run(command, check=True, capture_output=True)
    record = json.loads(next(out.glob("*_provenance.json")).read_text())
    for path in out.iterdir():
        path.unlink()
    return float(record["runtime_s"]), float(record["total_runtime_s"])


class WidgetBench:
    """A viewer with the scan and the Segment widget; times runs and event-loop ticks."""

    def __init__(self, model: Path, tick_ms: int) -> None:
        import napari
        from qtpy.QtCore import QTimer

        from napari_medattn.display.layers import volume_layer_data
        from napari_medattn.widgets.segment import SegmentWidget

        self.viewer = napari.Viewer(show=True)
        self.viewer.window.resize(1400, 900)
        self.viewer._add_layer_from_data(*volume_layer_data(read_volume(SAMPLE)))
        self.widget = SegmentWidget(self.viewer)
        self.viewer.window.add_dock_widget(self.widget, name="Segment")
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(tick_ms)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.widget.add_model(model)
        self.widget.device.setCurrentText("cpu")
        self._wait(lambda: self.widget.run_button.isEnabled())

    def _wait(self, condition) -> None:
        """Run the Qt event loop (not a busy loop) until ``condition()`` holds."""
        from qtpy.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        poll = QTimer()
        poll.setInterval(20)
        poll.timeout.connect(lambda: loop.quit() if condition() else None)
        poll.start()
        loop.exec()
        poll.stop()

    def run(self) -> dict[str, float]:
        """Wall time (s) of one run; longest and 99th percentile tick gaps (ms) over the
        whole run, while computing, and while the result layers are inserted."""
        self.ticks.clear()
        self.timer.start()
        self._wait(lambda: len(self.ticks) >= 20)  # the timer is ticking steadily
        started = time.perf_counter()
        job = self.widget.run()
        returned = []
        job.worker.returned.connect(lambda _result: returned.append(time.perf_counter()))
        self._wait(lambda: job.finished)
        wall = time.perf_counter() - started
        self._wait(lambda: time.perf_counter() > started + wall + 0.3)  # the final redraw
        self.timer.stop()
        if job.outcome != "done":
            raise SystemExit(f"The widget run ended with {job.outcome}.")
        ticks = np.array([started, *(t for t in self.ticks if t >= started)])
        gaps, ends = np.diff(ticks) * 1000, ticks[1:]
        computing = gaps[ends <= returned[0]]
        return {"wall": wall, "max_gap": float(gaps.max()),
                "p99_gap": float(np.percentile(gaps, 99)),
                "max_gap_computing": float(computing.max()),
                "max_gap_inserting": float(gaps[ends > returned[0]].max())}


def describe(run: dict[str, float]) -> str:
    return (f"{run['wall']:.2f} s, longest tick gap {run['max_gap']:.0f} ms (computing "
            f"{run['max_gap_computing']:.0f} ms, inserting layers "
            f"{run['max_gap_inserting']:.0f} ms), p99 {run['p99_gap']:.0f} ms")


def insert_child(model: Path, warm_up: bool) -> None:
    """One fresh viewer: time the insertion of a result Labels layer (``INSERT`` line).

    The scan and the docked Segment widget as in a real session; once the model is loaded
    (its worker job, which runs the labels-display warm-up unless ``warm_up`` is False),
    the layers of a segmentation are made by the widget's own functions and added as
    ``_show_result`` adds them. Printed: milliseconds of the insertion call and of the
    first event-loop pass after it (the first draw), both on the GUI thread.
    """
    from qtpy.QtWidgets import QApplication

    from napari_medattn.inference.pipeline import Segmentation
    from napari_medattn.io import Volume
    from napari_medattn.widgets import segment
    from napari_medattn.widgets.worker import add_layers

    if not warm_up:
        os.environ["NAPARI_MEDATTN_NO_LABELS_WARMUP"] = "1"  # the workaround's off switch
    bench = WidgetBench(model, 10)
    card = bench.widget.model.loaded.card
    scan = read_volume(SAMPLE)
    data = np.asarray(scan.data)
    labels = np.digitize(data, np.percentile(data, [50, 75, 90])).astype(np.uint8)
    result = Segmentation(Volume(labels, scan.affine, "SEG", {"name": "labels"}), {}, None, {},
                          {})
    layer_data = segment.segmentation_layer_data(result, card, {"image": "x", "model": "y"})
    layer_data[0][1]["colormap"] = segment.class_colormap(card)
    app = QApplication.instance()
    started = time.perf_counter()
    add_layers(bench.viewer, layer_data, widget=bench.widget)
    inserted = time.perf_counter()
    app.processEvents()
    drawn = time.perf_counter()
    print(f"INSERT {1000 * (inserted - started):.1f} {1000 * (drawn - inserted):.1f}", flush=True)
    bench.viewer.close()


def insert_ab(model: Path, pairs: int) -> None:
    """Alternate fresh processes without and with the warm-up; print medians and FIGUREs."""
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(pairs):
        for warm_up in (False, True):
            done = subprocess.run([sys.executable, __file__, "--insert-child",
                                   "on" if warm_up else "off", "--model", str(model)],
                                  capture_output=True, text=True, check=True)
            line = next(x for x in done.stdout.splitlines() if x.startswith("INSERT "))
            insert_ms, draw_ms = (float(v) for v in line.split()[1:])
            times[warm_up].append((insert_ms, draw_ms))
            print(f"first Labels layer, warm-up {'on ' if warm_up else 'off'}: insertion "
                  f"{insert_ms:.0f} ms, first draw {draw_ms:.0f} ms (load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
    for warm_up, name in ((False, "off"), (True, "on")):
        print(f"FIGURE viewer_first_labels_insertion_warm_up_{name} "
              f"{statistics.median(t[0] for t in times[warm_up]):.0f} ms")
        print(f"FIGURE viewer_first_labels_draw_warm_up_{name} "
              f"{statistics.median(t[1] for t in times[warm_up]):.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tick-ms", type=int, default=10)
    parser.add_argument("--compare-threads", action="store_true",
                        help="also run the widget with torch on every core")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="skip the widget's warm-up of the labels display in its worker "
                             "(to measure what it saves on the first run)")
    parser.add_argument("--insert-ab", type=int, default=0, metavar="PAIRS",
                        help="instead: time the first Labels layer's insertion in PAIRS pairs "
                             "of fresh viewers, without and with the warm-up")
    parser.add_argument("--insert-child", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from napari_medattn.launch import needs_virtual_display, start_virtual_display

    display = start_virtual_display() if needs_virtual_display() else None
    try:
        import torch

        from napari_medattn.widgets import worker

        if args.no_warm_up:
            os.environ["NAPARI_MEDATTN_NO_LABELS_WARMUP"] = "1"  # the workaround's off switch

        if args.insert_child:
            insert_child(args.model, args.insert_child == "on")
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            model = choose_model(tmp)
            if args.insert_ab:
                insert_ab(model, args.insert_ab)
                return 0
            out = tmp / "cli"
            out.mkdir()
            print(f"scan {SAMPLE.name}, model {model.name}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} torch threads, GUI job threads "
                  f"{worker.worker_threads()}, {os.cpu_count()} cores, labels display "
                  f"warm-up {'off' if args.no_warm_up else 'on'}, load average "
                  f"{os.getloadavg()[0]:.1f}")
            bench = WidgetBench(model, args.tick_ms)
            cli, runs = [], []
            for repeat in range(args.repeats):
                runtime, total = run_cli(model, out)
                cli.append(runtime)
                runs.append(bench.run())
                print(f"repeat {repeat}: CLI {runtime:.2f} s (with writing {total:.2f} s), "
                      f"widget {describe(runs[-1])}")
            if args.compare_threads:
                default = worker.worker_threads
                worker.worker_threads = lambda cores=None: os.cpu_count() or 1
                try:
                    print(f"widget with torch on every core: {describe(bench.run())}")
                finally:
                    worker.worker_threads = default
            bench.viewer.close()
        wall = statistics.median(r["wall"] for r in runs)
        print(f"median: CLI {statistics.median(cli):.2f} s, widget {wall:.2f} s")
        print(f"FIGURE viewer_max_tick_gap {max(r['max_gap'] for r in runs):.0f} ms")
        print(f"FIGURE viewer_max_tick_gap_computing "
              f"{max(r['max_gap_computing'] for r in runs):.0f} ms")
        print(f"FIGURE viewer_max_tick_gap_inserting_layers "
              f"{max(r['max_gap_inserting'] for r in runs):.0f} ms")
        print(f"FIGURE viewer_p99_tick_gap {statistics.median(r['p99_gap'] for r in runs):.0f} ms")
        print(f"FIGURE viewer_run_vs_cli {wall / statistics.median(cli):.2f} ratio")
    finally:
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
