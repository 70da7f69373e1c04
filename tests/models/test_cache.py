"""The process-wide model cache: one network per weights hash, shared, thread-safe, with
the eviction policy its module states (no napari needed)."""

import gc
import shutil
import threading
import time

import pytest
import torch

from napari_medattn.errors import Cancelled
from napari_medattn.models import create, registry
from napari_medattn.models.cache import ModelCache, model_key
from napari_medattn.models.card import ClassInfo, ModelCard
from napari_medattn.models.registry import ModelEntry, save_model

CONFIG = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8]}


def make_entry(folder, name, seed):
    """A tiny U-Net saved as a model folder (its card records the weights' hash)."""
    torch.manual_seed(seed)
    card = ModelCard(name=name, architecture="unet", config=dict(CONFIG),
                     classes=[ClassInfo("background", "#000000"), ClassInfo("x", "#ff0000")],
                     patch_size=(8, 8, 8))
    path = save_model(create("unet", **CONFIG), card, folder / name)
    return ModelEntry(ModelCard.read(path / registry.CARD_FILE), path, "user")


@pytest.fixture
def loads(monkeypatch):
    """Every weights load the cache asks the registry for, by path."""
    seen = []
    real = registry.load_model

    def counting(source, *args, **kwargs):
        seen.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(registry, "load_model", counting)
    return seen


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


def test_same_hash_is_one_network_and_another_hash_another(tmp_path, loads):
    cache = ModelCache()
    a = make_entry(tmp_path, "a", seed=0)
    b = make_entry(tmp_path, "b", seed=1)
    first, second = cache.load(a), cache.load(a)
    assert first.module is second.module and loads == [str(a.path)]
    assert first.key == model_key(a.card) and first.key[0] == registry.weights_sha256(
        a.path / registry.WEIGHTS_FILE)
    other = cache.load(b)
    assert other.module is not first.module and other.key != first.key
    assert not same_weights(other.module, first.module)
    # The network holds the weights on disk: the same as loading without the cache.
    module, _card = registry.load_model(a.path)
    assert same_weights(first.module, module)
    assert len(cache) == 2


def test_a_copy_of_the_same_weights_shares_the_network_but_keeps_its_card(tmp_path, loads):
    cache = ModelCache()
    a = make_entry(tmp_path, "a", seed=0)
    copy = tmp_path / "copy"
    shutil.copytree(a.path, copy)
    held = cache.load(a)
    # An opened folder (not a listed entry): read once to learn its hash, then shared.
    opened = cache.load(copy)
    assert opened.module is held.module and opened.card.name == "a"
    assert loads == [str(a.path), str(copy)]
    assert cache.peek(a).module is held.module
    assert cache.peek(make_entry(tmp_path, "c", seed=2)) is None  # not loaded: no read


def test_eviction_keeps_the_recent_ones_and_those_still_held(tmp_path, loads):
    cache = ModelCache(capacity=1)
    a, b = make_entry(tmp_path, "a", seed=0), make_entry(tmp_path, "b", seed=1)
    held_a = cache.load(a)
    cache.load(b)  # a leaves the most-recent set, but held_a still holds it
    assert cache.load(a).module is held_a.module and len(loads) == 2
    # a is the most recent again; nobody holds b: it is freed.
    gc.collect()
    assert model_key(b.card) not in cache
    # The cache itself holds its most recent model.
    del held_a
    gc.collect()
    assert model_key(a.card) in cache
    cache.load(a)
    assert len(loads) == 2
    cache.load(b)  # read again
    assert len(loads) == 3


def test_threads_asking_at_once_load_once(tmp_path, loads, monkeypatch):
    cache = ModelCache()
    a = make_entry(tmp_path, "a", seed=0)
    real = registry.load_model

    def slow(source, *args, **kwargs):
        time.sleep(0.2)  # every thread arrives while the first one reads
        return real(source, *args, **kwargs)

    monkeypatch.setattr(registry, "load_model", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.load(a)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 4 and len({id(r.module) for r in results}) == 1
    assert len(loads) == 1


def test_the_lease_serialises_work_and_can_be_cancelled(tmp_path):
    cache = ModelCache()
    held = cache.load(make_entry(tmp_path, "a", seed=0))
    entered, release = threading.Event(), threading.Event()

    def hold():
        with held.lease():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    assert entered.wait(10)
    with held.lease(blocking=False) as got:
        assert not got  # another job holds it: the caller leaves the network alone
    with pytest.raises(Cancelled):
        with held.lease(cancel=lambda: True):
            pass
    release.set()
    worker.join(10)
    with held.lease(blocking=False) as got:
        assert got


def test_a_name_is_a_listed_model_and_a_bad_one_a_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ENV_MODEL_PATH, str(tmp_path))
    monkeypatch.setattr(registry, "user_model_dir", lambda: tmp_path / "none")
    a = make_entry(tmp_path, "a", seed=0)
    cache = ModelCache()
    assert cache.load("a").key == model_key(a.card)
    with pytest.raises(registry.ModelError, match="no model called"):
        cache.load("no-such-model")

