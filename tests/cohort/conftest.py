"""A two-worker LocalCluster (one thread each) shared by the cohort tests, a tiny model and
small cases: the tests take seconds, not minutes."""

from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import probe_task  # noqa: E402

# The workers cannot import the tests' modules: send the probe task's code with it.
cloudpickle.register_pickle_by_value(probe_task)

#: Worker deaths a case may cause in these tests (Dask's default is 3; 1 keeps the
#: killed-worker tests short: each death restarts a worker process).
ALLOWED_FAILURES = 1


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    from napari_medattn.cohort import local_cluster

    with local_cluster(2, allowed_failures=ALLOWED_FAILURES, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 3-class U-Net with random weights (a fraction of a second per small case)."""
    from napari_medattn.models import create, registry
    from napari_medattn.models.card import ModelCard, default_classes

    torch.manual_seed(0)
    config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8],
              "attention": "none"}
    card = ModelCard(name="tiny-cohort-unet", architecture="unet", config=config,
                     classes=default_classes(["background", "dark", "bright"]),
                     patch_size=(16, 16, 16), modality="MR", spacing=(3.0, 3.0, 3.0),
                     orientation="RAS", normalization={"scheme": "zscore"},
                     training_data="none (random weights for tests)", license="BSD-3-Clause")
    return registry.save_model(create("unet", **config).eval(), card,
                               tmp_path_factory.mktemp("model") / "tiny")


def make_scans(folder: Path, count: int = 8, corrupt: str | None = "case_3") -> list[Path]:
    """``count`` small MR scans cut from nibabel's anatomical.nii (33 x 41 x 25 at 2 mm),
    each a different part and intensity scaling of the head; ``corrupt`` is a truncated
    gzip file (a NIfTI that cannot be read)."""
    import nibabel as nib
    from nibabel.testing import data_path

    source = nib.load(str(Path(data_path) / "anatomical.nii"))
    data = np.asarray(source.dataobj, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"case_{index}.nii.gz"
        if f"case_{index}" == corrupt:
            path.write_bytes(b"\x1f\x8b\x08\x00 not a whole gzip stream")
        else:
            crop = data[index % 3:, :, index % 4:] * (1.0 + 0.1 * index)
            affine = source.affine.copy()
            affine[:3, 3] += affine[:3, :3] @ np.array([index % 3, 0, index % 4])
            nib.save(nib.Nifti1Image(crop, affine), str(path))
        paths.append(path)
    return paths


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("case,image,reference\n" + "".join(f"{c},{i},{r}\n" for c, i, r in rows))
    return path
