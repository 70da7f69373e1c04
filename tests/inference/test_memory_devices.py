import math

import numpy as np
import pytest
import torch

from napari_medattn.errors import InsufficientMemoryError, ModelError
from napari_medattn.inference.devices import autocast, autocast_dtype, resolve_device
from napari_medattn.inference.memory import (
    FINALISE_CHUNK_FLOATS,
    FLOAT_BYTES,
    estimate_memory,
    plan_inference,
    slab_planes,
)
from napari_medattn.inference.sliding_window import sliding_window_inference
from napari_medattn.inference.window_options import MemoryBudget, OutputRequest, WindowOptions

CT = (300, 512, 512)
PATCH = (96, 96, 96)
MB = 1024**2
NOTHING = OutputRequest()  # labels only


def _estimate(batch_size: int, **options):
    """The CT job's estimate with labels only, one input channel and five classes."""
    return estimate_memory(CT, PATCH, in_channels=1, num_classes=5,
                           windows=WindowOptions(batch_size=batch_size), outputs=NOTHING,
                           **options)


def test_estimate_adds_up_the_parts():
    est = estimate_memory(CT, PATCH, in_channels=1, num_classes=5,
                          windows=WindowOptions(batch_size=2),
                          outputs=OutputRequest(keep_probabilities=(1,), uncertainty="entropy"),
                          model_bytes=10 * MB, activation_bytes_per_voxel=100)
    voxels = math.prod(CT)
    planes = slab_planes(CT, PATCH, 0.5, 2)
    assert planes == 96 + 48  # a batch of 2 reaches at most one row (of 81 windows) further
    chunk = 5 * (FINALISE_CHUNK_FLOATS // 5)  # finalising temporary: planes of 5 classes
    assert est.parts["stitching"] == ("RAM", ((5 + 3) * planes * 512 * 512 + chunk) * FLOAT_BYTES)
    assert est.parts["outputs"] == ("RAM", voxels * (1 + 2 * FLOAT_BYTES))
    assert est.parts["input"] == ("RAM", voxels * FLOAT_BYTES)
    window = math.prod(PATCH)
    network = 10 * MB + 2 * window * FLOAT_BYTES * (1 + 5 * 3) + 2 * window * 100
    assert est.parts["network"] == ("RAM", network)
    assert est.ram_bytes == sum(size for _, size in est.parts.values()) and est.gpu_bytes == 0
    # Streaming holds a slab: far less than the whole volume of every class.
    whole = estimate_memory(CT, PATCH, in_channels=1, num_classes=5,
                            windows=WindowOptions(batch_size=2, stream=False),
                            outputs=OutputRequest(uncertainty="entropy"))
    assert whole.parts["stitching"][1] == (8 * voxels + chunk) * FLOAT_BYTES
    # 144 of 300 planes.
    assert est.parts["stitching"][1] < 0.52 * whole.parts["stitching"][1]


def test_plan_keeps_a_job_that_fits():
    plan = plan_inference(CT, PATCH, in_channels=1, num_classes=5,
                          windows=WindowOptions(batch_size=4), on_gpu=False,
                          free_ram=64 * 1024 * MB, free_gpu=None, outputs=NOTHING)
    assert plan.batch_size == 4 and not plan.stitch_on_gpu and plan.notes == ()


def test_plan_reduces_the_batch_to_fit_ram():
    options = dict(in_channels=1, num_classes=5, on_gpu=False, free_gpu=None, outputs=NOTHING)
    one = _estimate(batch_size=1)
    two = _estimate(batch_size=2)
    free = (one.ram_bytes + two.ram_bytes) // 2
    plan = plan_inference(CT, PATCH, windows=WindowOptions(batch_size=8), free_ram=free,
                          **options)
    assert plan.batch_size == 1 and plan.estimate.ram_bytes <= free
    assert "Batch reduced from 8 to 1" in plan.notes[0]


def test_plan_moves_stitching_to_cpu_when_the_gpu_is_small():
    on_gpu = _estimate(batch_size=1, on_gpu=True, stitch_on_gpu=True)
    network_only = _estimate(batch_size=1, on_gpu=True, stitch_on_gpu=False)
    free_gpu = (on_gpu.gpu_bytes + network_only.gpu_bytes) // 2
    plan = plan_inference(CT, PATCH, in_channels=1, num_classes=5,
                          windows=WindowOptions(batch_size=1), on_gpu=True,
                          free_ram=64 * 1024 * MB, free_gpu=free_gpu, outputs=NOTHING)
    assert not plan.stitch_on_gpu and plan.estimate.gpu_bytes <= free_gpu
    assert plan.notes == ("Blending moved to the CPU to fit in GPU memory.",)


def test_plan_refuses_with_the_numbers():
    with pytest.raises(InsufficientMemoryError) as info:
        plan_inference(CT, PATCH, in_channels=1, num_classes=5,
                       windows=WindowOptions(batch_size=4), on_gpu=False,
                       free_ram=512 * MB, free_gpu=None, outputs=NOTHING)
    message = str(info.value)
    one = _estimate(batch_size=1)
    assert f"{one.ram_bytes / 1024**3:.2f} GB of RAM" in message
    assert "only 0.50 GB is free" in message and "stitching" in message


def test_engine_replans_and_refuses(volume3d, net3d):
    kwargs = dict(outputs=OutputRequest(keep_probabilities=(1,)), device="cpu")
    batch8 = WindowOptions(batch_size=8, skip_empty=False)
    reference = sliding_window_inference(volume3d, net3d, (12, 16, 10), windows=batch8, **kwargs)
    one, two = (estimate_memory((23, 30, 27), (12, 16, 10), in_channels=1, num_classes=2,
                                windows=WindowOptions(batch_size=batch),
                                outputs=OutputRequest(keep_probabilities=(1,)))
                for batch in (1, 2))
    between = MemoryBudget(free_ram=(one.ram_bytes + two.ram_bytes) // 2)
    replanned = sliding_window_inference(volume3d, net3d, (12, 16, 10), windows=batch8,
                                         memory=between, **kwargs)
    assert any("Batch reduced from 8 to 1" in n for n in replanned.notes)
    np.testing.assert_allclose(replanned.probabilities[1], reference.probabilities[1], atol=1e-6)
    with pytest.raises(InsufficientMemoryError, match="GB of RAM"):
        sliding_window_inference(volume3d, net3d, (12, 16, 10),
                                 windows=WindowOptions(skip_empty=False),
                                 memory=MemoryBudget(free_ram=1000), **kwargs)


def test_device_resolution_on_this_machine():
    assert resolve_device("cpu").device == torch.device("cpu")
    auto = resolve_device("auto")
    if torch.cuda.is_available():
        assert auto.device.type == "cuda" and autocast_dtype(auto.device) is not None
    else:
        assert auto.device.type in ("cpu", "mps")
        fallback = resolve_device("cuda:0")
        assert fallback.device == torch.device("cpu")
        assert fallback.note == "CUDA:0 was requested but no CUDA GPU is available; running on " \
                                "the CPU."
    with pytest.raises(ModelError, match="Unknown device 'tpu'"):
        resolve_device("tpu")


def test_native_bf16_is_read_from_cpu_flags(tmp_path):
    from napari_medattn.inference.devices import cpu_has_native_bf16

    with_bf16 = tmp_path / "zen4"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    without = tmp_path / "zen2"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert cpu_has_native_bf16(with_bf16) is True
    assert cpu_has_native_bf16(without) is False
    assert cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("native", [False, True])
def test_cpu_autocast_follows_native_bf16(monkeypatch, native):
    from napari_medattn.inference import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    # Reduced precision by default where the CPU computes bfloat16 natively, else float32.
    assert autocast_dtype(cpu) == (torch.bfloat16 if native else None)
    with autocast(cpu):
        out = torch.nn.Linear(3, 2)(torch.ones(1, 3))
    assert out.dtype == (torch.bfloat16 if native else torch.float32)
    assert devices.precision_name(cpu) == ("bfloat16" if native else "float32")
    with autocast(cpu, enabled=False):
        assert torch.nn.Linear(3, 2)(torch.ones(1, 3)).dtype == torch.float32
    assert devices.precision_name(cpu, enabled=False) == "float32"


def test_reduced_precision_on_cpu_stays_close(monkeypatch, volume3d, net3d):
    from napari_medattn.inference import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    kwargs = dict(windows=WindowOptions(skip_empty=False),
                  outputs=OutputRequest(keep_probabilities="all"), device="cpu")
    exact = sliding_window_inference(volume3d, net3d, (12, 16, 10), use_autocast=False, **kwargs)
    fast = sliding_window_inference(volume3d, net3d, (12, 16, 10), **kwargs)  # the default
    assert (exact.precision, fast.precision) == ("float32", "bfloat16")
    differences = [np.abs(fast.probabilities[c] - exact.probabilities[c]).max() for c in range(3)]
    assert 0 < max(differences) < 0.03
    assert (fast.labels == exact.labels).mean() > 0.97


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_autocast_matches_cpu(volume3d, net3d):
    cpu = sliding_window_inference(volume3d, net3d, (12, 16, 10),
                                   windows=WindowOptions(skip_empty=False),
                                   outputs=OutputRequest(keep_probabilities="all"), device="cpu",
                                   use_autocast=False)
    gpu = sliding_window_inference(volume3d, net3d, (12, 16, 10),
                                   windows=WindowOptions(skip_empty=False),
                                   outputs=OutputRequest(keep_probabilities="all"), device="cuda")
    assert gpu.device.startswith("cuda")
    for c in range(3):
        # bfloat16 has 8 bits of mantissa: probabilities agree to about 1e-2.
        np.testing.assert_allclose(gpu.probabilities[c], cpu.probabilities[c], atol=3e-2)
    assert (gpu.labels == cpu.labels).mean() > 0.95
