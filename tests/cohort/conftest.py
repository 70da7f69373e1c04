"""A two-worker LocalCluster (one thread each) shared by the cohort tests, a tiny model and
small cases: the tests take seconds, not minutes."""

from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import probe_task  # noqa: E402

# The workers cannot import the tests' modules: send the probe task's code with it.
cloudpickle.register_pickle_by_value(probe_task)

#: Worker deaths a case may cause in these tests (Dask's default is 3; 1 keeps the
#: killed-worker tests short: each death restarts a worker process).
ALLOWED_FAILURES = 1


@pytest.fixture(scope="session")
def client():
    from distributed import Client

    from napari_medattn.cohort import local_cluster

    with local_cluster(2, allowed_failures=ALLOWED_FAILURES, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as dask_client:
        yield dask_client


@pytest.fixture(scope="session")
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
