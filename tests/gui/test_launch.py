"""`python -m napari_medattn.launch --screenshot` works without a display."""

import os
import subprocess
import sys

import numpy as np
from skimage.io import imread

from napari_medattn.launch import WINDOW_SIZE


def test_launch_screenshot_without_display(tmp_path):
    out = tmp_path / "window.png"
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    settings = tmp_path / "napari_settings.yaml"
    env["NAPARI_CONFIG"] = str(settings)  # keep the user's napari settings untouched
    result = subprocess.run(
        [sys.executable, "-m", "napari_medattn.launch", "--screenshot", str(out)],
        env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layers: mni152_t1;" in result.stdout
    assert "widgets: Window/Level" in result.stdout
    shot = imread(out)
    # The whole window (canvas and docks), at the requested size or its HiDPI multiple.
    assert shot.shape[1] >= WINDOW_SIZE[0] and shot.shape[0] >= WINDOW_SIZE[1] - 50
    rgb = shot[..., :3].astype(int)
    white = np.all(rgb > 200, axis=-1)        # brain tissue on the gray colormap
    gold = (rgb[..., 0] > 200) & (rgb[..., 1] > 170) & (rgb[..., 2] < 80)  # letters
    assert white.mean() > 0.02, "the scan is not visible"
    assert gold.sum() > 50, "the orientation letters are not visible"
    # DICOM and NIfTI files open with this plugin instead of napari's one-slice reader.
    assert "'*.dcm': napari-medattn" in settings.read_text()
