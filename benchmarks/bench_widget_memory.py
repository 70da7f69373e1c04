"""Memory of the Segment and Attention-inspector widgets holding the same model.

Run from the repository root (a virtual display is started when there is none)::

    .venv/bin/python benchmarks/bench_widget_memory.py

A real viewer opens the 1 mm MNI152 T1 sample; a Segment widget is docked and its
model (the default, ``attention-unet-brain-tissue``) loaded in the background; then an
Attention inspector on the same model. Measured after each step: the process's resident
memory (``VmRSS``) and the bytes of model parameters alive in the process, each tensor
storage counted once (every ``torch.nn.Module`` found by the garbage collector), so two
widgets sharing one model count it once and two copies count twice. Widget modules are
imported before the first measurement, so the steps measure the widgets and their models,
not imports.

Works on any checkout of the plugin (set ``PYTHONPATH=<checkout>/src`` to measure
another one): it only uses the widgets' constructors and their ``job`` attribute.
"""

from __future__ import annotations

import gc
import os
import time


def rss_mb() -> float:
    """Resident memory of this process in MiB (``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def parameter_bytes() -> tuple[int, int]:
    """Bytes of parameter storage alive in the process (each storage once), and the number
    of top-level modules holding parameters (modules that are nobody's child)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # some deprecated torch objects warn when inspected
        warnings.simplefilter("ignore")
        modules = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module)]
    children = {id(c) for m in modules for c in m.children()}
    storages: dict[int, int] = {}
    for module in modules:
        for parameter in module.parameters(recurse=False):
            storage = parameter.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    roots = [m for m in modules if id(m) not in children and any(True for _ in m.parameters())]
    return sum(storages.values()), len(roots)


def wait_idle(widget, timeout_s: float = 300.0) -> None:
    """Process Qt events until the widget's background job (model loading) ended."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while True:
        QApplication.processEvents()
        job = getattr(widget, "job", None)
        if job is not None and job.finished:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the model did not load in time")
        time.sleep(0.05)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.01)


def main() -> None:
    from napari_medattn.launch import needs_virtual_display, start_virtual_display

    if needs_virtual_display():
        start_virtual_display()
    import napari
    import torch

    from napari_medattn import widgets  # noqa: F401
    from napari_medattn.widgets.inspector import InspectorWidget
    from napari_medattn.widgets.segment import SegmentWidget

    torch.set_num_threads(2)
    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-medattn", "mni152_t1")
    gc.collect()
    base_rss = rss_mb()
    base_params, _ = parameter_bytes()
    print(f"checkout {os.path.dirname(widgets.__file__)}")
    print(f"baseline: RSS {base_rss:.1f} MiB, parameters {base_params / 2**20:.2f} MiB")
    rows = []
    for name, make in (("segment", SegmentWidget), ("inspector", InspectorWidget)):
        widget = make(viewer)
        viewer.window.add_dock_widget(widget, name=name)
        wait_idle(widget)
        gc.collect()
        params, roots = parameter_bytes()
        rows.append((name, rss_mb() - base_rss, (params - base_params) / 2**20, roots))
        print(f"+ {name}: RSS +{rows[-1][1]:.1f} MiB, parameters +{rows[-1][2]:.2f} MiB "
              f"in {roots} model(s)")
    print(f"load average {os.getloadavg()[0]:.1f} (2-core machine shared with other jobs)")
    print(f"FIGURE widget_memory_rss_segment {rows[0][1]:.1f} MiB")
    print(f"FIGURE widget_memory_rss_segment_and_inspector {rows[1][1]:.1f} MiB")
    print(f"FIGURE widget_memory_parameters_segment {rows[0][2]:.2f} MiB")
    print(f"FIGURE widget_memory_parameters_segment_and_inspector {rows[1][2]:.2f} MiB")
    print(f"FIGURE widget_memory_models_segment_and_inspector {rows[1][3]} count")
    viewer.close()


if __name__ == "__main__":
    main()
